//! Callback registrations: what a marketplace may ask for, checked.

use schemars::JsonSchema;
use serde::Deserialize;

use super::input::InputError;

pub const MAX_URL: usize = 2048;
pub const MAX_EVENT_TYPES: usize = 50;
pub const MAX_EVENT_TYPE: usize = 64;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCallback {
    pub url: Option<String>,
    pub method: Option<String>,
    pub revision: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub enabled: Option<bool>,
}

/// `PUT /callbacks/{id}`: turn it on or off, change its filter.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateCallback {
    pub enabled: Option<bool>,
    pub event_types: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Post,
    Put,
    Get,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Post => "post",
            Method::Put => "put",
            Method::Get => "get",
        }
    }

    pub fn parse(s: &str) -> Option<Method> {
        match s.to_ascii_lowercase().as_str() {
            "post" => Some(Method::Post),
            "put" => Some(Method::Put),
            "get" => Some(Method::Get),
            _ => None,
        }
    }
}

/// An absolute http(s) URL with a host and no credentials in it. Whether its addresses
/// may be delivered to is judged at delivery time, on the addresses connected to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackUrl(String);

impl CallbackUrl {
    pub fn parse(raw: &str, require_https: bool) -> Result<CallbackUrl, InputError> {
        let bad = |why: &str| InputError::new("url", why.to_owned());
        if raw.len() > MAX_URL {
            return Err(bad(&format!("must be at most {MAX_URL} characters")));
        }
        let url =
            url::Url::parse(raw).map_err(|e| bad(&format!("is not an absolute URL ({e})")))?;
        match url.scheme() {
            "https" => {}
            "http" if !require_https => {}
            "http" => {
                return Err(bad(
                    "must use https (this server refuses plain http callbacks)",
                ));
            }
            _ => return Err(bad("must be an http or https URL")),
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("must name a host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad("must not carry credentials; verify signatures instead"));
        }
        if url.fragment().is_some() {
            return Err(bad("must not have a #fragment"));
        }
        Ok(CallbackUrl(url.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone)]
pub struct NewCallback {
    pub url: CallbackUrl,
    pub method: Method,
    pub revision: String,
    pub event_types: Vec<String>,
    pub enabled: bool,
}

#[derive(Debug, Clone)]
pub struct CallbackChanges {
    pub enabled: Option<bool>,
    pub event_types: Option<Vec<String>>,
}

/// Event types look like `debit.created` (lower case words joined by dots).
fn event_types(types: Vec<String>) -> Result<Vec<String>, InputError> {
    if types.len() > MAX_EVENT_TYPES {
        return Err(InputError::new(
            "event_types",
            format!("must list at most {MAX_EVENT_TYPES} types"),
        ));
    }
    for t in &types {
        let well_formed = t.len() <= MAX_EVENT_TYPE
            && t.split('.').count() >= 2
            && t.split('.').all(|part| {
                !part.is_empty() && part.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            });
        if !well_formed {
            return Err(InputError::new(
                "event_types",
                format!("\"{t}\" is not an event type like \"debit.created\""),
            ));
        }
    }
    let mut types = types;
    types.sort();
    types.dedup();
    Ok(types)
}

impl CreateCallback {
    pub fn validate(self, require_https: bool) -> Result<NewCallback, InputError> {
        let url = self
            .url
            .ok_or_else(|| InputError::new("url", "is required"))?;
        let method = match self.method {
            None => Method::Post,
            Some(m) => Method::parse(&m).ok_or_else(|| {
                InputError::new("method", format!("\"{m}\" must be post, put or get"))
            })?,
        };
        let revision = self.revision.unwrap_or_else(|| "1.1".to_owned());
        if revision != "1.1" {
            return Err(InputError::new(
                "revision",
                format!("\"{revision}\" is not supported; use \"1.1\""),
            ));
        }
        Ok(NewCallback {
            url: CallbackUrl::parse(&url, require_https)?,
            method,
            revision,
            event_types: event_types(self.event_types.unwrap_or_default())?,
            enabled: self.enabled.unwrap_or(true),
        })
    }
}

impl UpdateCallback {
    pub fn validate(self) -> Result<CallbackChanges, InputError> {
        Ok(CallbackChanges {
            enabled: self.enabled,
            event_types: self.event_types.map(event_types).transpose()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callback_urls_must_be_absolute_http_without_credentials() {
        assert!(CallbackUrl::parse("https://example.com/hooks", true).is_ok());
        assert!(CallbackUrl::parse("http://example.com/hooks", false).is_ok());
        for bad in [
            "/relative",
            "ftp://example.com/",
            "https://user:pw@example.com/",
            "https://example.com/#x",
            "mailto:a@b.c",
        ] {
            let err = CallbackUrl::parse(bad, false).expect_err(bad);
            assert_eq!(err.field, "url");
        }
        let err = CallbackUrl::parse("http://example.com/", true).expect_err("plain http");
        assert!(err.message.contains("https"), "{err}");
    }

    #[test]
    fn event_type_filters_are_well_formed_and_deduplicated() {
        assert_eq!(
            event_types(vec![
                "debit.created".into(),
                "debit.created".into(),
                "order.updated".into()
            ]),
            Ok(vec!["debit.created".to_owned(), "order.updated".to_owned()])
        );
        assert!(event_types(vec!["Debit".into()]).is_err());
        assert!(event_types(vec!["debit.".into()]).is_err());
    }
}
