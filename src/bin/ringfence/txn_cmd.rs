//! `ringfence txn`: the bank workload on the transaction service.

use std::time::Duration;

use clap::Subcommand;
use ringfence::real::RealEnv;
use ringfence::txn::client::TxnClient;
use ringfence::txn::{bank, Outcome};

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
            match bank::transfer(client, from, to, amount).await {
                Ok(Outcome::Committed) => say!("committed: {amount} from account {from} to account {to}"),
                Ok(Outcome::Aborted(reason)) => return Err(format!("aborted: {reason}")),
                Err(e) => return Err(e.to_string()),
            }
        }
        TxnCommand::Audit { accounts } => {
            let balances = bank::audit(client, accounts).await.map_err(|e| e.to_string())?;
            for (account, balance) in balances.iter().enumerate() {
                say!("account {account}: {balance}");
            }
            say!("total: {}", balances.iter().sum::<i64>());
        }
    }
    Ok(())
}
