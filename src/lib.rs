//! # secmoe
//!
//! Private inference of Mixture-of-Experts Transformers between two parties under semi-honest
//! two-party computation: additive secret shares over Z_2^64 ([`ring`]), an encrypted and metered
//! link ([`net`]), oblivious transfer ([`ot`]), RLWE/BFV encryption ([`he`]), the backend that runs the bulk
//! math ([`backend`]), the two-party protocols ([`proto`]) and the Mixture-of-Experts layer ([`moe`]).

#![recursion_limit = "256"]

pub mod backend;
pub mod he;
pub mod model;
pub mod moe;
pub mod net;
pub mod ot;
pub mod proto;
pub mod ring;
