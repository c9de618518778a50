-- Deliveries and attempts are written only by hookline's own statements, which take their
-- references from rows they have in hand (a delivery from the event and callback it joins,
-- an attempt from the delivery it claimed), and none of these rows is ever deleted. Their
-- foreign keys checked nothing those statements do not already ensure, at the cost of a
-- parent row locked (FOR KEY SHARE) for every delivery inserted (two) and every attempt
-- logged (one). Whatever deletes these rows one day must delete a delivery's attempts with
-- it, and an event's or a callback's deliveries with them.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_event_id_fkey,
    DROP CONSTRAINT deliveries_callback_id_fkey;
ALTER TABLE attempts DROP CONSTRAINT attempts_delivery_id_fkey;
