//! latplan's planner: inventory → plans → SSH → session → collection → store → analysis → report.
//!
//! Modules point downwards only (DESIGN.md §11):
//! `cli` → `executor`, `session`, `collector`, `analysis`, `report` → `plan`, `tasks`, `facts`
//! → `inventory`, `transport`, `store`.
pub mod analysis;
pub mod cli;
pub mod collector;
pub mod executor;
pub mod facts;
pub mod inventory;
pub mod plan;
pub mod report;
pub mod session;
pub mod store;
pub mod tasks;
pub mod transport;
