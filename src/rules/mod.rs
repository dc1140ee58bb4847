//! Rule evaluation, pure and in event time. Takes a rule bound to one point and a
//! reading; gives the conditions that became active or inactive at the reading's
//! own timestamp. No wall clock, no I/O: a replay at any speed raises the same
//! alarms, and the state (delay timers, windows) is a plain value that the store
//! persists so a restart resumes the same timers.

mod eval;

pub use eval::{local_hour, Evaluator, RuleState, RuleTransition};
