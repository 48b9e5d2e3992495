DROP INDEX audit.events_alerts_time;
