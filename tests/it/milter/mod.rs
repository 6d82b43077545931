//! The milter: against a real Postfix as its client, in a storm, and against broken peers.

mod hostile;
mod postfix;
mod storm;
