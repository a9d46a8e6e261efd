//! The bank scenarios' register workload, judged for isolation by
//! [`ringfence::history::bank::registers`].
//!
//! Balances repeat, so the bank's reads cannot say which write they saw;
//! registers can. Each register transaction reads one register and writes
//! another without reading it first (a blind write, which the bank never
//! does), or reads both; a written value is the writer's transaction id,
//! unique by construction.

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use ringfence::history::bank::register_key;
use ringfence::txn::client::{TxnClient, TxnError};
use ringfence::txn::{Outcome, TxnId, Value};

use super::{Bank, BankOp};
use crate::env::SimEnv;
use crate::scenario::Client;

/// Registers `reg-0..REGISTERS`: few, so that transactions meet.
pub const REGISTERS: u32 = 2;

/// A register's value: the id of the transaction that wrote it.
fn encode(txn: TxnId) -> Value {
    txn.to_le_bytes().to_vec()
}

fn decode(value: Option<Value>) -> Option<TxnId> {
    value.map(|bytes| TxnId::from_le_bytes(bytes.try_into().expect("register values are 8 bytes")))
}

/// Runs one register transaction and records it.
pub(super) async fn run<const C: u32, const LOAD: u32, const CHANGES: bool, const MOVES: bool>(
    bank: &Bank<C, LOAD, CHANGES, MOVES>,
    txc: &mut TxnClient<SimEnv>,
    client: &Client<BankOp>,
    rng: &mut ChaCha8Rng,
) {
    let mut registers: Vec<u32> = (0..REGISTERS).collect();
    registers.shuffle(rng);
    let write = rng.gen_bool(2.0 / 3.0).then_some(registers[1]);
    let read: Vec<u32> = if write.is_some() { vec![registers[0]] } else { registers };
    client.invoke(BankOp::Registers {
        txn: None,
        reads: vec![],
        writes: vec![],
        reason: None,
    });
    let (mut id, mut reads, mut writes) = (None, Vec::new(), Vec::new());
    let result: Result<Outcome, TxnError> = async {
        let mut txn = txc.begin().await?;
        id = Some(txn.id);
        for &r in &read {
            reads.push((r, decode(txc.get(&mut txn, &register_key(r)).await?)));
        }
        if let Some(w) = write {
            let value = encode(txn.id);
            txc.put(&mut txn, &register_key(w), value).await?;
            writes.push((w, txn.id));
        }
        // A crash of this client from here on leaves a transaction that may
        // commit: its writes must be in the history, or a later read of
        // them looks like garbage.
        client.progress(BankOp::Registers {
            txn: id,
            reads: reads.clone(),
            writes: writes.clone(),
            reason: None,
        });
        txc.commit(txn).await
    }
    .await;
    let unknown = matches!(result, Err(TxnError::Unavailable { .. } | TxnError::Forgotten { .. }));
    if matches!(result, Ok(Outcome::Committed)) || unknown && !writes.is_empty() {
        bank.recheck(id.expect("begun"));
    }
    let reason = match &result {
        Ok(Outcome::Committed) => None,
        Ok(Outcome::Aborted(r)) | Err(TxnError::Aborted(r)) => Some(r.to_string()),
        Err(e) => Some(e.to_string()),
    };
    let op = BankOp::Registers {
        txn: id,
        reads,
        writes,
        reason,
    };
    match result {
        Ok(Outcome::Committed) => client.ok(op),
        // During commit an unanswered request leaves the outcome unknown.
        _ if unknown && id.is_some() => client.info(op),
        _ => client.fail(op),
    };
}
