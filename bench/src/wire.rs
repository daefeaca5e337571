//! The coordinator ↔ worker protocol: one JSON object per line on the worker's stdin and
//! stdout. The coordinator sends each round's COMMIT instants after the round's writes; the
//! worker answers with counts and a serialized histogram, so receipts never cross processes.

use serde::{Deserialize, Serialize};

/// One write of a round: its sequence number (dense from 0), the customer index it was written
/// for, and when its COMMIT returned (`clock::now_ns`), 0 when the write failed.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Write(pub u32, pub u32, pub u64);

/// Coordinator → worker.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToWorker {
    /// The round's writes are done: wait up to `drain_ms` for every expected receipt, then count.
    Round { round: u32, drain_ms: u64, writes: Vec<Write> },
    /// Close every connection and exit.
    Stop,
}

/// Worker → coordinator.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FromWorker {
    /// Every client tried to connect.
    Ready { connected: u32, failed: u32, first_error: Option<String> },
    /// The counts of one round.
    Round(RoundCounts),
}

/// What one worker's clients received in one round.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct RoundCounts {
    /// The round.
    pub round: u32,
    /// Deliveries that clients should have had (written, committed, and matching their filter).
    pub expected: u64,
    /// Distinct expected deliveries received.
    pub delivered: u64,
    /// Of those, received before the COMMIT returned to the writer (latency recorded as 0).
    pub early: u64,
    /// Expected deliveries never received (by the end of the drain).
    pub lost: u64,
    /// Second and later receipts of the same write by the same client.
    pub duplicates: u64,
    /// Receipts of this run's writes the client should not have had (its filter excludes them).
    pub misdelivered: u64,
    /// Receipts of an earlier round, after that round was counted.
    pub late: u64,
    /// Frames that are not this run's writes (other writers, setup rows).
    pub foreign: u64,
    /// Clients whose connection ended.
    pub closed: u32,
    /// Last receipt instant of the round (`clock::now_ns`), 0 if none.
    pub last_receipt_ns: u64,
    /// Latency histogram (ns), HdrHistogram V2 serialization, hex.
    pub histogram: String,
}
