//! The vault's part of the client RPC (`QueryVault`, `VaultBalances`, `TrackVault`): request
//! to criteria, states and balances to messages, vault errors to gRPC statuses.

use tokio::sync::mpsc;
use tonic::Status;
use treaty_core::{Currency, PublicKey, X500Name};
use treaty_rpc::v1 as pb;
use treaty_vault::{AggregateRow, Balance, ColumnValue, Criteria, GroupBy, Sort, StatusFilter, Vault, VaultError, VaultState};

/// Page size when the request gives none.
pub const DEFAULT_PAGE_SIZE: u32 = 500;

/// The statuses a request may name.
pub const STATUSES: &str = "unconsumed, consumed, all";

/// A vault error as a gRPC status, its message led by the error's code.
pub fn status(e: VaultError) -> Status {
    let message = format!("{} {e}", e.code());
    match e {
        VaultError::InvalidPageSize { .. }
        | VaultError::InvalidCursor { .. }
        | VaultError::UnknownSortColumn { .. }
        | VaultError::UnknownColumn { .. }
        | VaultError::ColumnTypeMismatch { .. }
        | VaultError::InvalidSort { .. } => Status::invalid_argument(message),
        VaultError::UpdatesLagged { .. } => Status::resource_exhausted(message),
        e if e.is_transient() => Status::unavailable(message),
        _ => Status::internal(message),
    }
}

/// The criteria and page size a query or track request asks for; `party` resolves the X.500
/// names the request's JSON criteria may use for participants and owners.
pub fn criteria(request: &pb::VaultQueryRequest, party: &dyn Fn(&X500Name) -> Option<PublicKey>) -> Result<(Criteria, u32), Status> {
    let status = match request.status.trim().to_ascii_lowercase().as_str() {
        "" | "unconsumed" => StatusFilter::Unconsumed,
        "consumed" => StatusFilter::Consumed,
        "all" => StatusFilter::All,
        _ => return Err(Status::invalid_argument(format!("status {:?} is not one of {STATUSES}", request.status))),
    };
    let mut criteria = Criteria::Status(status);
    if !request.state_types.is_empty() {
        criteria = criteria.and(Criteria::StateTypes(request.state_types.clone()));
    }
    if !request.where_json.trim().is_empty() {
        let value: serde_json::Value =
            serde_json::from_str(&request.where_json).map_err(|e| Status::invalid_argument(format!("where_json is not JSON: {e}")))?;
        criteria = criteria.and(crate::criteria_json::parse(&value, "where", party).map_err(Status::invalid_argument)?);
    }
    let page_size = if request.page_size == 0 { DEFAULT_PAGE_SIZE } else { request.page_size };
    Ok((criteria, page_size))
}

/// A state as the protocol shows it. The fungible shape and linear id are what the schema
/// registered for its type reads from it (none when no schema is registered).
pub fn state_message(vault: &Vault, s: &VaultState) -> pb::VaultStateMessage {
    let columns = vault.columns(s).unwrap_or_default();
    let data = &s.state.data;
    pb::VaultStateMessage {
        tx_id: s.state_ref.txhash.to_string(),
        output_index: s.state_ref.index,
        type_id: data.type_id.clone(),
        schema_version: data.schema_version,
        contract: s.state.contract.clone(),
        notary: s.state.notary.name.to_string(),
        status: s.status.as_str().into(),
        recorded_at_micros: s.recorded_at.0,
        consumed_at_micros: s.consumed_at.map_or(0, |t| t.0),
        consuming_tx: s.consuming_tx.map(|t| t.to_string()).unwrap_or_default(),
        participants: data
            .participants
            .iter()
            .map(|p| pb::VaultParticipant {
                owning_key: p.owning_key().to_string(),
                name: p.name().map(ToString::to_string).unwrap_or_default(),
            })
            .collect(),
        fungible: columns.fungible.map(|f| pb::VaultFungible {
            owner_key: f.owner.owning_key().to_string(),
            owner_name: f.owner.name().map(ToString::to_string).unwrap_or_default(),
            issuer: f.issuer,
            token: f.token,
            quantity: f.quantity,
        }),
        linear_id: s.linear_id.as_ref().map(|l| l.id.to_string()).unwrap_or_default(),
        external_id: s.linear_id.as_ref().and_then(|l| l.external_id.clone()).unwrap_or_default(),
        lock_id: s.lock_id.map(|l| l.0.to_string()).unwrap_or_default(),
        state_bytes: s.state_bytes.clone(),
    }
}

/// How many fraction digits a token's amounts have: a currency code's ISO 4217 digits, none
/// for any other token.
pub fn fraction_digits(token: &str) -> u8 {
    use treaty_core::TokenType;
    Currency::new(token).map_or(0, |c| c.fraction_digits())
}

/// `raw` smallest units as a decimal with `digits` fraction digits (`1250`, 2 → `"12.50"`).
pub fn decimal(raw: u128, digits: u8) -> String {
    if digits == 0 {
        return raw.to_string();
    }
    let text = format!("{raw:0>width$}", width = usize::from(digits) + 1);
    let (whole, fraction) = text.split_at(text.len() - usize::from(digits));
    format!("{whole}.{fraction}")
}

/// The group-by names an aggregate request may use besides app columns.
pub const GROUP_BY: &str = "token, issuer, owner, type_id, contract, notary, status";

/// The grouping an aggregate request names (an unknown name is taken as an app column, which
/// the vault checks).
pub fn group_by(names: &[String]) -> Result<Vec<GroupBy>, Status> {
    names
        .iter()
        .map(|n| {
            Ok(match n.trim() {
                "token" => GroupBy::Token,
                "issuer" => GroupBy::Issuer,
                "owner" => GroupBy::Owner,
                "type_id" => GroupBy::StateType,
                "contract" => GroupBy::Contract,
                "notary" => GroupBy::Notary,
                "status" => GroupBy::Status,
                "" => return Err(Status::invalid_argument(format!("an empty group-by name (one of {GROUP_BY}, or an app column)"))),
                column => GroupBy::Column(column.to_string()),
            })
        })
        .collect()
}

/// An aggregate row as the protocol shows it.
pub fn aggregate_message(row: &AggregateRow) -> pb::VaultAggregateRow {
    pb::VaultAggregateRow {
        group: row
            .group
            .iter()
            .map(|v| match v {
                Some(ColumnValue::Text(t)) => t.clone(),
                Some(ColumnValue::Integer(i)) => i.to_string(),
                None => String::new(),
            })
            .collect(),
        is_null: row.group.iter().map(Option::is_none).collect(),
        count: row.count,
        sum: row.sum.to_string(),
    }
}

/// A balance as the protocol shows it.
pub fn balance_message(b: &Balance) -> pb::VaultBalance {
    let digits = fraction_digits(&b.token);
    pb::VaultBalance {
        token: b.token.clone(),
        issuer: b.issuer.clone(),
        quantity: decimal(b.quantity, digits),
        raw_quantity: b.quantity.to_string(),
        states: b.states,
        fraction_digits: u32::from(digits),
    }
}

/// The order a query request asks for (recording order when it names none).
pub fn sort(request: &pb::VaultQueryRequest) -> Result<Sort, Status> {
    if request.sort.trim().is_empty() { Ok(Sort::recording_order()) } else { Sort::parse(&request.sort).map_err(status) }
}

/// Streams every state matching `criteria` into `tx` in `sort` order, one vault page at a time:
/// the node holds one page (and the channel's few messages) however many states match.
pub async fn stream_states(
    vault: Vault,
    criteria: Criteria,
    sort: Sort,
    page_size: u32,
    tx: mpsc::Sender<Result<pb::VaultStateMessage, Status>>,
) {
    let mut states = match vault.stream(criteria, sort, page_size) {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.send(Err(status(e))).await;
            return;
        }
    };
    loop {
        match states.next_page().await {
            Ok(Some(page)) => {
                for s in &page {
                    if tx.send(Ok(state_message(&vault, s))).await.is_err() {
                        return;
                    }
                }
            }
            Ok(None) => return,
            Err(e) => {
                let _ = tx.send(Err(status(e))).await;
                return;
            }
        }
    }
}

/// Sends how many states match `criteria`, then one update per applied transaction that
/// concerns them, until the client goes away or falls behind the vault's feed.
pub async fn track(vault: Vault, criteria: Criteria, tx: mpsc::Sender<Result<pb::VaultUpdateMessage, Status>>) {
    use pb::vault_update_message::Event;
    // Subscribe before counting: no update is lost between the two.
    let mut updates = match vault.subscribe(criteria.clone()) {
        Ok(u) => u,
        Err(e) => {
            let _ = tx.send(Err(status(e))).await;
            return;
        }
    };
    let first = vault.count(&criteria).await.map(|n| pb::VaultUpdateMessage { event: Some(Event::SnapshotCount(n)) }).map_err(status);
    let failed = first.is_err();
    if tx.send(first).await.is_err() || failed {
        return;
    }
    loop {
        tokio::select! {
            _ = tx.closed() => return,
            update = updates.recv() => {
                let message = update.map_err(status).map(|u| pb::VaultUpdateMessage {
                    event: Some(Event::Update(pb::VaultUpdate {
                        tx_id: u.tx_id.to_string(),
                        produced: u.produced.iter().map(|s| state_message(&vault, s)).collect(),
                        consumed: u.consumed.iter().map(|s| state_message(&vault, s)).collect(),
                    })),
                });
                let failed = message.is_err();
                if tx.send(message).await.is_err() || failed {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_in_the_tokens_units() {
        assert_eq!(decimal(1250, 2), "12.50");
        assert_eq!(decimal(5, 2), "0.05");
        assert_eq!(decimal(0, 2), "0.00");
        assert_eq!(decimal(7, 0), "7");
        assert_eq!(decimal(u128::MAX, 3), "340282366920938463463374607431768211.455");
        assert_eq!((fraction_digits("USD"), fraction_digits("JPY"), fraction_digits("KWD"), fraction_digits("TOK!")), (2, 0, 3, 0));
    }

    #[test]
    fn statuses_default_to_unconsumed_and_others_are_refused_by_name() {
        let none = |_: &X500Name| None;
        let req = |status: &str| pb::VaultQueryRequest { status: status.into(), ..Default::default() };
        assert_eq!(criteria(&req(""), &none).map(|c| c.1).ok(), Some(DEFAULT_PAGE_SIZE));
        assert!(criteria(&req("ALL"), &none).is_ok());
        let e = criteria(&req("spent"), &none).err().map(|s| s.message().to_string()).unwrap_or_default();
        assert_eq!(e, "status \"spent\" is not one of unconsumed, consumed, all");
    }

    #[test]
    fn where_json_is_anded_and_its_errors_are_invalid_arguments() {
        let none = |_: &X500Name| None;
        let req = |w: &str| pb::VaultQueryRequest { where_json: w.into(), ..Default::default() };
        let (c, _) = criteria(&req(r#"{"state_type": "a.B"}"#), &none).unwrap();
        assert_eq!(c, Criteria::unconsumed().and(Criteria::StateTypes(vec!["a.B".into()])));
        let bad = criteria(&req("{nope"), &none).unwrap_err();
        assert_eq!(bad.code(), tonic::Code::InvalidArgument);
        assert!(bad.message().starts_with("where_json is not JSON"), "{}", bad.message());
        let bad = criteria(&req(r#"{"colour": 1}"#), &none).unwrap_err();
        assert_eq!(bad.code(), tonic::Code::InvalidArgument);
        assert!(bad.message().contains("where: unknown condition \"colour\""), "{}", bad.message());
        let sorted = pb::VaultQueryRequest { sort: "quantity desc".into(), ..Default::default() };
        assert!(sort(&sorted).is_ok());
        let bad = sort(&pb::VaultQueryRequest { sort: "quantity sideways".into(), ..Default::default() }).unwrap_err();
        assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn group_by_names_map_to_columns_and_the_rest_to_app_columns() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            group_by(&names(&["token", " issuer", "type_id", "trade_ref"])).unwrap(),
            vec![GroupBy::Token, GroupBy::Issuer, GroupBy::StateType, GroupBy::Column("trade_ref".into())]
        );
        assert_eq!(group_by(&names(&[""])).unwrap_err().code(), tonic::Code::InvalidArgument);
        let row = AggregateRow {
            group: vec![Some(ColumnValue::Text("USD".into())), None, Some(ColumnValue::Integer(7))],
            count: 2,
            sum: 1 << 70,
        };
        let m = aggregate_message(&row);
        assert_eq!(
            (m.group, m.is_null, m.count, m.sum),
            (vec!["USD".into(), String::new(), "7".into()], vec![false, true, false], 2, "1180591620717411303424".into())
        );
    }
}
