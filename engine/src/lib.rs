//! annal: an embeddable, event-sourced durable workflow engine.
