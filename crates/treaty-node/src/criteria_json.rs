//! Vault criteria in JSON: what RPC clients and `treaty vault query --where` send
//! (docs/vault.md, "Criteria as JSON"). One object is one condition; `and` / `or` take lists:
//!
//! ```json
//! {"and": [
//!   {"state_type": "treaty.finance.Cash"},
//!   {"fungible": {"token": "USD", "issuer": "O=Bank,L=London,C=GB", "min_quantity": 10000}},
//!   {"or": [{"participant": "O=Bob,L=Paris,C=FR"}, {"recorded": {"from": "2026-11-22T00:00:00Z"}}]}
//! ]}
//! ```
//!
//! Every error names the path of the offending part (`where.and[1].fungible.min_quantity`).

use serde_json::{Map, Value};
use treaty_core::{PublicKey, Timestamp, X500Name};
use treaty_vault::{ColumnCondition, ColumnValue, Criteria, FungibleCriteria, LockFilter, LockId, StatusFilter, TimeRange};

/// Deepest nesting of `and` / `or` accepted.
const MAX_DEPTH: usize = 16;

/// The condition names, for error messages.
pub const CONDITIONS: &str = "and, or, status, state_type, contract, notary, participant, linear_id, external_id, recorded, consumed, unconsumed_at, fungible, column, lock";

/// Parses `value` (at `path`) into criteria; `party` resolves an X.500 name to its well-known
/// key (for `participant` and fungible `owner`, which also take key text).
pub fn parse(value: &Value, path: &str, party: &dyn Fn(&X500Name) -> Option<PublicKey>) -> Result<Criteria, String> {
    parse_at(value, path, party, 0)
}

fn parse_at(value: &Value, path: &str, party: &dyn Fn(&X500Name) -> Option<PublicKey>, depth: usize) -> Result<Criteria, String> {
    if depth > MAX_DEPTH {
        return Err(format!("{path}: nested deeper than {MAX_DEPTH} levels"));
    }
    let object = value.as_object().ok_or_else(|| format!("{path}: expected an object with one condition ({CONDITIONS})"))?;
    let [(name, v)] = object.iter().collect::<Vec<_>>()[..] else {
        return Err(format!("{path}: expected exactly one condition, found {} ({CONDITIONS}); combine several with \"and\"", object.len()));
    };
    let at = format!("{path}.{name}");
    Ok(match name.as_str() {
        "and" | "or" => {
            let items = v.as_array().ok_or_else(|| format!("{at}: expected a list of conditions"))?;
            if items.is_empty() {
                return Err(format!("{at}: the list is empty"));
            }
            let parts = items
                .iter()
                .enumerate()
                .map(|(i, c)| parse_at(c, &format!("{at}[{i}]"), party, depth + 1))
                .collect::<Result<Vec<_>, _>>()?;
            if name == "and" { Criteria::And(parts) } else { Criteria::Or(parts) }
        }
        "status" => Criteria::Status(match text(v, &at)?.as_str() {
            "unconsumed" => StatusFilter::Unconsumed,
            "consumed" => StatusFilter::Consumed,
            "all" => StatusFilter::All,
            other => return Err(format!("{at}: {other:?} is not one of unconsumed, consumed, all")),
        }),
        "state_type" => Criteria::StateTypes(texts(v, &at)?),
        "contract" => Criteria::Contracts(texts(v, &at)?),
        "notary" => Criteria::Notaries(texts(v, &at)?.iter().map(|n| name_of(n, &at)).collect::<Result<_, _>>()?),
        "participant" => Criteria::Participants(texts(v, &at)?.iter().map(|p| key(p, &at, party)).collect::<Result<_, _>>()?),
        "linear_id" => Criteria::LinearIds(
            texts(v, &at)?
                .iter()
                .map(|u| uuid::Uuid::parse_str(u).map_err(|e| format!("{at}: {u:?} is not a UUID: {e}")))
                .collect::<Result<_, _>>()?,
        ),
        "external_id" => Criteria::ExternalIds(texts(v, &at)?),
        "recorded" => Criteria::Recorded(range(v, &at)?),
        "consumed" => Criteria::Consumed(range(v, &at)?),
        "unconsumed_at" => Criteria::UnconsumedAt(time(v, &at)?),
        "fungible" => Criteria::Fungible(fungible(v, &at, party)?),
        "column" => column(v, &at)?,
        "lock" => Criteria::Lock(match text(v, &at)?.as_str() {
            "unlocked" => LockFilter::Unlocked,
            "locked" => LockFilter::Locked,
            other => LockFilter::LockedBy(LockId(
                uuid::Uuid::parse_str(other).map_err(|_| format!("{at}: {other:?} is not unlocked, locked or a lock id (UUID)"))?,
            )),
        }),
        other => return Err(format!("{path}: unknown condition {other:?} (one of {CONDITIONS})")),
    })
}

fn text(v: &Value, at: &str) -> Result<String, String> {
    v.as_str().map(str::to_string).ok_or_else(|| format!("{at}: expected a string"))
}

/// A string or a non-empty list of strings.
fn texts(v: &Value, at: &str) -> Result<Vec<String>, String> {
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) if !items.is_empty() => items.iter().enumerate().map(|(i, x)| text(x, &format!("{at}[{i}]"))).collect(),
        _ => Err(format!("{at}: expected a string or a non-empty list of strings")),
    }
}

fn name_of(text: &str, at: &str) -> Result<X500Name, String> {
    text.parse().map_err(|e| format!("{at}: {text:?} is not an X.500 name: {e}"))
}

/// Key text (`ed25519:<hex>`, ...) or a well-known party's X.500 name.
fn key(text: &str, at: &str, party: &dyn Fn(&X500Name) -> Option<PublicKey>) -> Result<PublicKey, String> {
    if let Ok(k) = text.parse::<PublicKey>() {
        return Ok(k);
    }
    let name: X500Name = text.parse().map_err(|_| format!("{at}: {text:?} is neither a key (ed25519:<hex>, ...) nor an X.500 name"))?;
    party(&name).ok_or_else(|| format!("{at}: {name} is not a party this node knows"))
}

fn time(v: &Value, at: &str) -> Result<Timestamp, String> {
    let t = text(v, at)?;
    t.parse().map_err(|e| format!("{at}: {e}"))
}

fn fields<'a>(v: &'a Value, at: &str, allowed: &[&str]) -> Result<&'a Map<String, Value>, String> {
    let object = v.as_object().ok_or_else(|| format!("{at}: expected an object with {}", allowed.join(", ")))?;
    if let Some(unknown) = object.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!("{at}: unknown field {unknown:?} (expected {})", allowed.join(", ")));
    }
    if object.is_empty() {
        return Err(format!("{at}: expected at least one of {}", allowed.join(", ")));
    }
    Ok(object)
}

fn range(v: &Value, at: &str) -> Result<TimeRange, String> {
    let o = fields(v, at, &["from", "until"])?;
    let get = |f: &str| o.get(f).map(|x| time(x, &format!("{at}.{f}"))).transpose();
    Ok(TimeRange { from: get("from")?, until: get("until")? })
}

fn quantity(v: &Value, at: &str) -> Result<u64, String> {
    v.as_u64().ok_or_else(|| format!("{at}: expected a non-negative integer (the token's smallest unit)"))
}

fn fungible(v: &Value, at: &str, party: &dyn Fn(&X500Name) -> Option<PublicKey>) -> Result<FungibleCriteria, String> {
    let o = fields(v, at, &["token", "issuer", "owner", "min_quantity", "max_quantity"])?;
    let list = |f: &str| o.get(f).map(|x| texts(x, &format!("{at}.{f}"))).transpose();
    let owners = match list("owner")? {
        None => None,
        Some(owners) => Some(owners.iter().map(|t| key(t, &format!("{at}.owner"), party)).collect::<Result<Vec<_>, _>>()?),
    };
    Ok(FungibleCriteria {
        owners,
        issuers: list("issuer")?,
        tokens: list("token")?,
        min_quantity: o.get("min_quantity").map(|x| quantity(x, &format!("{at}.min_quantity"))).transpose()?,
        max_quantity: o.get("max_quantity").map(|x| quantity(x, &format!("{at}.max_quantity"))).transpose()?,
    })
}

fn value(v: &Value, at: &str) -> Result<ColumnValue, String> {
    match v {
        Value::String(s) => Ok(ColumnValue::Text(s.clone())),
        Value::Number(n) => n.as_i64().map(ColumnValue::Integer).ok_or_else(|| format!("{at}: {n} is not a 64-bit integer")),
        _ => Err(format!("{at}: expected a string or an integer")),
    }
}

fn column(v: &Value, at: &str) -> Result<Criteria, String> {
    let o = fields(v, at, &["name", "eq", "in", "min", "max"])?;
    let name = o.get("name").map(|n| text(n, &format!("{at}.name"))).transpose()?.ok_or_else(|| format!("{at}: \"name\" is missing"))?;
    let get = |f: &str| o.get(f).map(|x| value(x, &format!("{at}.{f}"))).transpose();
    let condition = match (o.get("eq"), o.get("in"), o.contains_key("min") || o.contains_key("max")) {
        (Some(eq), None, false) => ColumnCondition::Equals(value(eq, &format!("{at}.eq"))?),
        (None, Some(Value::Array(items)), false) if !items.is_empty() => {
            ColumnCondition::In(items.iter().enumerate().map(|(i, x)| value(x, &format!("{at}.in[{i}]"))).collect::<Result<_, _>>()?)
        }
        (None, Some(_), false) => return Err(format!("{at}.in: expected a non-empty list")),
        (None, None, true) => ColumnCondition::Range { min: get("min")?, max: get("max")? },
        _ => return Err(format!("{at}: give one of \"eq\", \"in\", or \"min\"/\"max\"")),
    };
    Ok(Criteria::Column { name, condition })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn none(_: &X500Name) -> Option<PublicKey> {
        None
    }

    fn ok(v: Value) -> Criteria {
        parse(&v, "where", &none).unwrap_or_else(|e| panic!("{v}: {e}"))
    }

    fn err(v: Value) -> String {
        parse(&v, "where", &none).expect_err(&v.to_string())
    }

    #[test]
    fn every_condition_parses() {
        let key = treaty_core::KeyPair::from_seed(treaty_core::SignatureScheme::Ed25519, [1; 32]).unwrap().public();
        let id = uuid::Uuid::from_u128(7);
        let c = ok(json!({"and": [
            {"status": "all"},
            {"state_type": ["a.B", "c.D"]},
            {"contract": "a.Contract"},
            {"notary": "O=Notary,L=Zurich,C=CH"},
            {"participant": key.to_string()},
            {"linear_id": id.to_string()},
            {"external_id": "ext-1"},
            {"recorded": {"from": "2026-11-22T00:00:00Z", "until": "2026-11-23T00:00:00Z"}},
            {"consumed": {"until": "2026-11-23T00:00:00Z"}},
            {"unconsumed_at": "2026-11-22T12:00:00Z"},
            {"fungible": {"token": "USD", "issuer": ["O=Bank,L=London,C=GB"], "owner": key.to_string(), "min_quantity": 10, "max_quantity": 20}},
            {"or": [{"column": {"name": "trade_ref", "eq": "T-1"}}, {"column": {"name": "notional", "min": 5, "max": 9}}, {"column": {"name": "n", "in": [1, 2]}}]},
            {"lock": "unlocked"}
        ]}));
        let Criteria::And(parts) = c else { panic!("and") };
        assert_eq!(parts.len(), 13);
        assert_eq!(parts[0], Criteria::Status(StatusFilter::All));
        assert_eq!(parts[4], Criteria::Participants(vec![key.clone()]));
        assert_eq!(parts[5], Criteria::LinearIds(vec![id]));
        assert_eq!(
            parts[10],
            Criteria::Fungible(FungibleCriteria {
                owners: Some(vec![key]),
                issuers: Some(vec!["O=Bank,L=London,C=GB".into()]),
                tokens: Some(vec!["USD".into()]),
                min_quantity: Some(10),
                max_quantity: Some(20),
            })
        );
        assert_eq!(parts[8], Criteria::Consumed(TimeRange { from: None, until: Some("2026-11-23T00:00:00Z".parse().unwrap()) }));
    }

    #[test]
    fn a_name_resolves_to_its_key() {
        let key = treaty_core::KeyPair::from_seed(treaty_core::SignatureScheme::Ed25519, [2; 32]).unwrap().public();
        let k2 = key.clone();
        let bob: X500Name = "O=Bob,L=Paris,C=FR".parse().unwrap();
        let known = move |n: &X500Name| (*n == bob).then(|| k2.clone());
        assert_eq!(parse(&json!({"participant": "O=Bob,L=Paris,C=FR"}), "where", &known), Ok(Criteria::Participants(vec![key])));
        let e = parse(&json!({"participant": "O=Eve,L=Oslo,C=NO"}), "where", &known).unwrap_err();
        assert!(
            e.contains("where.participant: O=Eve, L=Oslo, C=NO is not a party this node knows")
                || e.contains("is not a party this node knows"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_the_path() {
        assert!(err(json!([])).starts_with("where: expected an object"));
        assert!(err(json!({"status": "all", "state_type": "x"})).contains("exactly one condition, found 2"));
        assert!(err(json!({"colour": "red"})).contains("unknown condition \"colour\""));
        assert!(
            err(json!({"and": [{"status": "all"}, {"fungible": {"min_quantity": -1}}]})).starts_with("where.and[1].fungible.min_quantity:")
        );
        assert!(err(json!({"fungible": {"tokn": "USD"}})).contains("unknown field \"tokn\""));
        assert!(err(json!({"linear_id": "nope"})).starts_with("where.linear_id: \"nope\" is not a UUID"));
        assert!(err(json!({"recorded": {"from": "yesterday"}})).starts_with("where.recorded.from:"));
        assert!(err(json!({"column": {"name": "x", "eq": 1, "min": 0}})).contains("give one of"));
        assert!(err(json!({"or": []})).contains("the list is empty"));
        assert!(err(json!({"participant": "nobody"})).contains("neither a key"));
        let mut deep = json!({"status": "all"});
        for _ in 0..20 {
            deep = json!({"and": [deep]});
        }
        assert!(err(deep).contains("nested deeper than 16"));
    }
}
