-- The hold queue reads approval events by type (`approval_requested`, `approval_decision`).
CREATE INDEX events_event_type ON events (event_type);
