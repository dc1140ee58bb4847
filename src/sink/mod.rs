//! Export sinks: subscribers of the committed stream that deliver what was
//! committed to other systems, from the store's export feed (a durable,
//! ordered outbox), never on the ingest path.

pub mod influx;
