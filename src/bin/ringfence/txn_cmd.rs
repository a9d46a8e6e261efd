//! `ringfence txn`: the bank workload on the transaction service.

use std::time::Duration;

use clap::Subcommand;
use ringfence::real::RealEnv;
use ringfence::txn::client::{TxnClient, TxnError};
use ringfence::txn::{bank, AbortReason, Outcome};

use crate::ConfigArg;

#[derive(clap::Args, Debug)]
pub struct TxnArgs {
    #[command(flatten)]
    config: ConfigArg,
    #[command(subcommand)]
    command: TxnCommand,
}

#[derive(Subcommand, Debug)]
enum TxnCommand {
    /// Move AMOUNT from account FROM to account TO in one transaction
    /// (accounts are numbers; each starts with 100).
    Transfer { from: u32, to: u32, amount: i64 },
    /// Read accounts 0..ACCOUNTS in one transaction and print them and their
    /// total (the same total every time, if transactions are atomic).
    Audit {
        /// At most 1000: every account is one read in the transaction.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
        accounts: u32,
    },
}

/// How long a `txn` command waits, before it exits, for its last messages
/// (an abort) to be written.
const FLUSH_LIMIT: Duration = Duration::from_secs(1);

/// Transactions a command starts while shards refuse its accounts because
/// they moved (each next one routed by views read again)...
const MOVED_ATTEMPTS: u32 = 5;
/// ... pausing this much longer before each (a move's window, between
/// the source's fence and the target's install, is milliseconds long).
const MOVED_PAUSE: Duration = Duration::from_millis(100);

pub async fn run(args: TxnArgs) -> Result<(), String> {
    let config = args.config.load()?;
    let env = config.client_env(&config.txn_nodes()).map_err(|e| e.to_string())?;
    let mut client = config.txn_client(env.clone());
    let result = command(&mut client, args.command).await;
    if !env.flush(FLUSH_LIMIT).await {
        tracing::warn!("exiting with messages not yet sent; a shard frees an unfinished transaction's locks after its idle timeout");
    }
    result
}

async fn command(client: &mut TxnClient<RealEnv>, command: TxnCommand) -> Result<(), String> {
    match command {
        TxnCommand::Transfer { from, to, amount } => {
            if amount < 0 || from == to {
                return Err("transfer a non-negative amount between two different accounts".to_string());
            }
            for attempt in 1.. {
                let reason = match bank::transfer(client, from, to, amount).await {
                    Ok(Outcome::Committed) => break,
                    Ok(Outcome::Aborted(reason)) | Err(TxnError::Aborted(reason)) => reason,
                    Err(e) => return Err(e.to_string()),
                };
                if !moved(&reason) || attempt == MOVED_ATTEMPTS {
                    return Err(format!("aborted: {reason}"));
                }
                tokio::time::sleep(MOVED_PAUSE * attempt).await;
            }
            say!("committed: {amount} from account {from} to account {to}");
        }
        TxnCommand::Audit { accounts } => {
            let mut attempt = 0;
            let balances = loop {
                attempt += 1;
                match bank::audit(client, accounts).await {
                    Ok(balances) => break balances,
                    Err(TxnError::Aborted(reason)) if moved(&reason) && attempt < MOVED_ATTEMPTS => {
                        tokio::time::sleep(MOVED_PAUSE * attempt).await
                    }
                    Err(e) => return Err(e.to_string()),
                }
            };
            for (account, balance) in balances.iter().enumerate() {
                say!("account {account}: {balance}");
            }
            say!("total: {}", balances.iter().sum::<i64>());
        }
    }
    Ok(())
}

/// Whether a shard refused the transaction because an account it asked
/// for has moved (or is moving) away.
fn moved(reason: &AbortReason) -> bool {
    matches!(reason, AbortReason::NotServed { .. })
}
