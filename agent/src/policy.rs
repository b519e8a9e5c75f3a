//! The scavenging policy (being written).
