//! The bank workload on transactions: accounts `acct-<n>` holding `i64`
//! balances (an account never written holds [`INITIAL`]), transfers that
//! read two balances and write both, and audits that read every account in
//! one transaction. Money is only moved, never made, so every audit of the
//! same accounts must see the same total — the atomicity check that the
//! simulator's bank scenarios, the command line and the real-process chaos
//! test share.

use super::client::{TxnClient, TxnError};
use super::{AbortReason, Key, Outcome, Value};
use crate::env::Env;

/// Every account's opening balance.
pub const INITIAL: i64 = 100;

/// The key account `account` is stored under; every party of the workload
/// must agree on it, so it lives here.
pub fn account_key(account: u32) -> Key {
    format!("acct-{account}")
}

/// A balance as stored: 8 little-endian bytes, what [`decode_balance`]
/// reads back.
pub fn encode_balance(balance: i64) -> Value {
    balance.to_le_bytes().to_vec()
}

/// A stored balance; `None` (never written) is [`INITIAL`].
pub fn decode_balance(value: Option<Value>) -> i64 {
    match value {
        None => INITIAL,
        Some(bytes) => i64::from_le_bytes(bytes.try_into().expect("balances are 8 bytes")),
    }
}

/// Moves `amount` from account `from` to account `to`; aborts (with
/// [`AbortReason::ClientAbort`]) if `amount` is negative or `from` holds
/// less. A transfer from an account to itself checks the balance and
/// writes nothing (two writes of one key would keep only the second).
pub async fn transfer<E: Env>(txc: &mut TxnClient<E>, from: u32, to: u32, amount: i64) -> Result<Outcome, TxnError> {
    let mut txn = txc.begin().await?;
    let a = decode_balance(txc.get(&mut txn, &account_key(from)).await?);
    let b = decode_balance(txc.get(&mut txn, &account_key(to)).await?);
    if amount < 0 || a < amount {
        txc.abort(txn).await;
        return Ok(Outcome::Aborted(AbortReason::ClientAbort));
    }
    if from != to {
        txc.put(&mut txn, &account_key(from), encode_balance(a - amount))
            .await?;
        txc.put(&mut txn, &account_key(to), encode_balance(b + amount)).await?;
    }
    txc.commit(txn).await
}

/// Reads accounts `0..accounts` in one transaction: the balances, if it
/// committed.
pub async fn audit<E: Env>(txc: &mut TxnClient<E>, accounts: u32) -> Result<Vec<i64>, TxnError> {
    let mut txn = txc.begin().await?;
    let mut balances = Vec::with_capacity(accounts as usize);
    for account in 0..accounts {
        balances.push(decode_balance(txc.get(&mut txn, &account_key(account)).await?));
    }
    match txc.commit(txn).await? {
        Outcome::Committed => Ok(balances),
        Outcome::Aborted(reason) => Err(TxnError::Aborted(reason)),
    }
}
