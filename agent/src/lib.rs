//! The Lull agent.
pub mod sandbox;
