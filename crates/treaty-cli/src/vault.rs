//! `treaty vault query | track | balances`: the node's vault through client RPC.

use std::io::Write;
use std::path::Path;

use anyhow::{Result, bail};
use serde_json::{Value, json};
use treaty_core::Timestamp;
use treaty_rpc::v1 as pb;

use crate::client::{connect, rpc};
use crate::node::runtime;

/// The statuses `--status` takes.
const STATUSES: [&str; 3] = ["unconsumed", "consumed", "all"];

/// The request `--state-type`, `--status`, `--where` and `--sort` make, checked before
/// connecting.
fn query_request(
    state_types: Vec<String>,
    status: Option<String>,
    where_json: Option<String>,
    sort: Option<String>,
) -> Result<pb::VaultQueryRequest> {
    let status = status.unwrap_or_else(|| "unconsumed".into());
    if !STATUSES.contains(&status.as_str()) {
        bail!("--status {status:?} is not one of {}", STATUSES.join(", "));
    }
    let where_json = checked_where(where_json)?;
    Ok(pb::VaultQueryRequest { state_types, status, page_size: 0, where_json, sort: sort.unwrap_or_default() })
}

/// `--where` checked to be JSON before it is sent (the node checks what it says).
fn checked_where(where_json: Option<String>) -> Result<String> {
    let Some(text) = where_json else { return Ok(String::new()) };
    if let Err(e) = serde_json::from_str::<Value>(&text) {
        bail!("--where is not JSON: {e}");
    }
    Ok(text)
}

/// Text, or JSON null when empty.
fn text_or_null(s: &str) -> Value {
    if s.is_empty() { Value::Null } else { Value::String(s.into()) }
}

fn time(micros: i64) -> String {
    Timestamp(micros).to_string()
}

fn state_json(s: &pb::VaultStateMessage) -> Value {
    json!({
        "state_ref": format!("{}({})", s.tx_id, s.output_index),
        "tx_id": s.tx_id,
        "output_index": s.output_index,
        "type_id": s.type_id,
        "schema_version": s.schema_version,
        "contract": s.contract,
        "notary": s.notary,
        "status": s.status,
        "recorded_at": time(s.recorded_at_micros),
        "recorded_at_micros": s.recorded_at_micros,
        "consumed_at": if s.consumed_at_micros == 0 { Value::Null } else { Value::String(time(s.consumed_at_micros)) },
        "consumed_at_micros": if s.consumed_at_micros == 0 { Value::Null } else { json!(s.consumed_at_micros) },
        "consuming_tx": text_or_null(&s.consuming_tx),
        "participants": s.participants.iter().map(|p| json!({ "owning_key": p.owning_key, "name": text_or_null(&p.name) })).collect::<Vec<_>>(),
        "fungible": s.fungible.as_ref().map(|f| json!({
            "owner_key": f.owner_key,
            "owner_name": text_or_null(&f.owner_name),
            "issuer": f.issuer,
            "token": f.token,
            "quantity": f.quantity,
        })),
        "linear_id": text_or_null(&s.linear_id),
        "external_id": text_or_null(&s.external_id),
        "lock_id": text_or_null(&s.lock_id),
        "state_bytes_hex": hex::encode(&s.state_bytes),
    })
}

/// Who a state concerns, for the table: its participants' names (keys when anonymous).
fn participants(s: &pb::VaultStateMessage) -> String {
    let names: Vec<&str> = s.participants.iter().map(|p| if p.name.is_empty() { p.owning_key.as_str() } else { p.name.as_str() }).collect();
    names.join("; ")
}

/// Prints the vault's states matching `state_types` and `status`, as they stream in.
pub fn query(
    node_dir: &Path,
    state_types: Vec<String>,
    status: Option<String>,
    where_json: Option<String>,
    sort: Option<String>,
    json: bool,
) -> Result<()> {
    let request = query_request(state_types, status, where_json, sort)?;
    runtime()?.block_on(async {
        let mut client = connect(node_dir).await?;
        let mut states = client.query_vault(request).await.map_err(rpc)?.into_inner();
        let mut out = std::io::stdout().lock();
        let mut count = 0u64;
        // One JSON array or one table, written as the states arrive: memory stays bounded.
        if json {
            write!(out, "[")?;
        }
        while let Some(s) = states.message().await.map_err(rpc)? {
            if json {
                let sep = if count == 0 { "\n  " } else { ",\n  " };
                write!(out, "{sep}{}", serde_json::to_string(&state_json(&s))?)?;
            } else {
                if count == 0 {
                    writeln!(out, "{:<70} {:<10} {:<20} {:<27} {:<24} PARTICIPANTS", "STATE", "STATUS", "TYPE", "RECORDED", "AMOUNT")?;
                }
                let amount = s.fungible.as_ref().map(|f| format!("{} {}", f.quantity, f.token)).unwrap_or_else(|| "-".into());
                writeln!(
                    out,
                    "{:<70} {:<10} {:<20} {:<27} {:<24} {}",
                    format!("{}({})", s.tx_id, s.output_index),
                    s.status,
                    s.type_id,
                    time(s.recorded_at_micros),
                    amount,
                    participants(&s)
                )?;
            }
            count += 1;
        }
        if json {
            writeln!(out, "{}]", if count == 0 { "" } else { "\n" })?;
        } else if count == 0 {
            writeln!(out, "no states")?;
        } else {
            writeln!(out, "{count} state(s)")?;
        }
        Ok(())
    })
}

fn balance_json(b: &pb::VaultBalance) -> Value {
    json!({
        "token": b.token,
        "issuer": b.issuer,
        "quantity": b.quantity,
        "raw_quantity": b.raw_quantity,
        "fraction_digits": b.fraction_digits,
        "states": b.states,
    })
}

/// Prints counts and quantity sums of the matching states per group.
pub fn aggregate(
    node_dir: &Path,
    state_types: Vec<String>,
    status: Option<String>,
    where_json: Option<String>,
    group_by: Vec<String>,
    json: bool,
) -> Result<()> {
    let query = query_request(state_types, status, where_json, None)?;
    runtime()?.block_on(async {
        let mut client = connect(node_dir).await?;
        let request = pb::VaultAggregateRequest { query: Some(query), group_by: group_by.clone() };
        let rows = client.aggregate_vault(request).await.map_err(rpc)?.into_inner().rows;
        let value = |r: &pb::VaultAggregateRow, i: usize| -> Value {
            if r.is_null.get(i).copied().unwrap_or(false) {
                Value::Null
            } else {
                Value::String(r.group.get(i).cloned().unwrap_or_default())
            }
        };
        if json {
            let docs: Vec<Value> = rows
                .iter()
                .map(|r| {
                    let group: serde_json::Map<String, Value> =
                        group_by.iter().enumerate().map(|(i, g)| (g.trim().to_string(), value(r, i))).collect();
                    json!({ "group": group, "count": r.count, "sum": r.sum })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&docs)?);
        } else {
            let mut out = std::io::stdout().lock();
            for g in &group_by {
                write!(out, "{:<40} ", g.trim().to_uppercase())?;
            }
            writeln!(out, "{:>10} {:>24}", "COUNT", "SUM")?;
            for r in &rows {
                for i in 0..group_by.len() {
                    let v = value(r, i);
                    write!(out, "{:<40} ", v.as_str().unwrap_or("-"))?;
                }
                writeln!(out, "{:>10} {:>24}", r.count, r.sum)?;
            }
        }
        Ok(())
    })
}

/// Prints the totals of the unconsumed fungible states per token and issuer.
pub fn balances(node_dir: &Path, json: bool) -> Result<()> {
    runtime()?.block_on(async {
        let mut client = connect(node_dir).await?;
        let balances = client.vault_balances(pb::VaultBalancesRequest {}).await.map_err(rpc)?.into_inner().balances;
        if json {
            println!("{}", serde_json::to_string_pretty(&balances.iter().map(balance_json).collect::<Vec<_>>())?);
        } else if balances.is_empty() {
            println!("no balances");
        } else {
            let token_w = balances.iter().map(|b| b.token.len()).max().unwrap_or(0).max(5);
            let issuer_w = balances.iter().map(|b| b.issuer.len()).max().unwrap_or(0).max(6);
            let qty_w = balances.iter().map(|b| b.quantity.len()).max().unwrap_or(0).max(8);
            println!("{:<token_w$}  {:<issuer_w$}  {:>qty_w$}  STATES", "TOKEN", "ISSUER", "QUANTITY");
            for b in &balances {
                println!("{:<token_w$}  {:<issuer_w$}  {:>qty_w$}  {}", b.token, b.issuer, b.quantity, b.states);
            }
        }
        Ok(())
    })
}

/// Prints how many states match now, then each recorded transaction that produced or
/// consumed matching states, as the node reports it; after `updates` transactions it stops.
pub fn track(node_dir: &Path, state_types: Vec<String>, where_json: Option<String>, updates: Option<u64>, json: bool) -> Result<()> {
    let where_json = checked_where(where_json)?;
    runtime()?.block_on(async {
        let mut client = connect(node_dir).await?;
        let request = pb::VaultQueryRequest { state_types, status: "unconsumed".into(), page_size: 0, where_json, sort: String::new() };
        let mut feed = client.track_vault(request).await.map_err(rpc)?.into_inner();
        let mut out = std::io::stdout().lock();
        let mut seen = 0u64;
        let mut snapshot = false;
        // The snapshot count always comes first; then the transactions, `updates` of them.
        while !snapshot || updates.is_none_or(|n| seen < n) {
            let Some(message) = feed.message().await.map_err(rpc)? else {
                bail!("the node ended the feed (it is shutting down)");
            };
            match message.event {
                Some(pb::vault_update_message::Event::SnapshotCount(n)) => {
                    snapshot = true;
                    if json {
                        writeln!(out, "{}", json!({ "snapshot_count": n }))?;
                    } else {
                        writeln!(out, "{n} unconsumed state(s) match now; following new transactions")?;
                    }
                }
                Some(pb::vault_update_message::Event::Update(u)) => {
                    seen += 1;
                    if json {
                        let produced: Vec<Value> = u.produced.iter().map(state_json).collect();
                        let consumed: Vec<Value> = u.consumed.iter().map(state_json).collect();
                        writeln!(out, "{}", json!({ "tx_id": u.tx_id, "produced": produced, "consumed": consumed }))?;
                    } else {
                        writeln!(out, "transaction {}: {} produced, {} consumed", u.tx_id, u.produced.len(), u.consumed.len())?;
                        for (sign, states) in [("+", &u.produced), ("-", &u.consumed)] {
                            for s in states.iter() {
                                let amount =
                                    s.fungible.as_ref().map(|f| format!("{} {}", f.quantity, f.token)).unwrap_or_else(|| "-".into());
                                writeln!(out, "  {sign} {}({}) {} {amount} {}", s.tx_id, s.output_index, s.type_id, participants(s))?;
                            }
                        }
                    }
                }
                None => {}
            }
            out.flush()?;
        }
        Ok(())
    })
}
