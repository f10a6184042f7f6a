//! Queries: sort orders, pages, cursors and streams.
//!
//! Pagination is by **keyset**, never by `OFFSET`: a page's [`Cursor`] holds the sort key
//! values of its last state, and the next page asks for the states after them. Every sort
//! order ends with the vault's recording sequence (unique), so the order is total and each
//! state is returned exactly once, however many there are and however long the walk takes;
//! the database seeks straight to the cursor instead of skipping rows. [`StateStream`] walks
//! all pages holding one page in memory.
//!
//! NULLs (a consumed time, a quantity, an app column a state lacks) sort after every value,
//! in both directions, on both backends.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sqlx::Row;
use treaty_core::{SecureHash, encoding};

use crate::Vault;
use crate::criteria::{Criteria, value_column};
use crate::error::VaultError;
use crate::record::{STATE_COLUMN_COUNT, STATE_COLUMNS, VaultState, state_row};
use crate::schema::{BUILTIN_SORT_NAMES, ColumnType, Registry};
use crate::sql::{Arg, Context, Sql, bind_args, on_pool};

/// The largest page a query returns.
pub const MAX_PAGE_SIZE: u32 = 10_000;

/// What a sort order sorts by.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SortColumn {
    /// When the state was recorded (`recorded_at`).
    RecordedAt,
    /// When it was consumed (`consumed_at`; unconsumed states last).
    ConsumedAt,
    /// Its state ref: transaction id bytes, then output index (`state_ref`).
    StateRef,
    /// Its fungible quantity (`quantity`; non-fungible states last).
    Quantity,
    /// Its type id (`type_id`).
    StateType,
    /// A registered app column (states without a value last).
    Column(String),
}

impl SortColumn {
    /// The column a name stands for: a built-in name (`recorded_at`, `consumed_at`,
    /// `state_ref`, `quantity`, `type_id`), else an app column (checked when the query runs).
    pub fn named(name: &str) -> SortColumn {
        match name {
            "recorded_at" => SortColumn::RecordedAt,
            "consumed_at" => SortColumn::ConsumedAt,
            "state_ref" => SortColumn::StateRef,
            "quantity" => SortColumn::Quantity,
            "type_id" => SortColumn::StateType,
            other => SortColumn::Column(other.to_string()),
        }
    }
}

/// A sort direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Smallest first.
    Ascending,
    /// Largest first.
    Descending,
}

impl Direction {
    fn sql(self) -> &'static str {
        match self {
            Direction::Ascending => "ASC",
            Direction::Descending => "DESC",
        }
    }
}

/// A sort order: the keys in priority order, then the recording order, which breaks ties —
/// ascending, unless every key is a column that is never NULL (`recorded_at`, `state_ref`,
/// `type_id`) and all share one direction, in which case the ties follow that direction (so
/// `recorded_at desc` is newest first throughout, and an index serves the walk). The default
/// is the recording order alone.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Sort {
    keys: Vec<(SortColumn, Direction)>,
}

impl Sort {
    /// The order the vault recorded the states in.
    pub fn recording_order() -> Sort {
        Sort::default()
    }

    /// By one column.
    pub fn by(column: SortColumn, direction: Direction) -> Sort {
        Sort { keys: vec![(column, direction)] }
    }

    /// Then by another column.
    pub fn then(mut self, column: SortColumn, direction: Direction) -> Sort {
        self.keys.push((column, direction));
        self
    }

    /// The keys, in priority order.
    pub fn keys(&self) -> &[(SortColumn, Direction)] {
        &self.keys
    }

    /// Parses `"quantity desc, recorded_at"`: comma-separated column names, each optionally
    /// followed by `asc` or `desc` (default `asc`). App column names are checked when the
    /// query runs.
    pub fn parse(spec: &str) -> Result<Sort, VaultError> {
        let bad = |reason: String| VaultError::InvalidSort { spec: spec.chars().take(200).collect(), reason };
        let mut sort = Sort::default();
        if spec.trim().is_empty() {
            return Ok(sort);
        }
        for part in spec.split(',') {
            let words: Vec<&str> = part.split_whitespace().collect();
            let (name, dir) = match words.as_slice() {
                [name] => (*name, Direction::Ascending),
                [name, d] if d.eq_ignore_ascii_case("asc") => (*name, Direction::Ascending),
                [name, d] if d.eq_ignore_ascii_case("desc") => (*name, Direction::Descending),
                [_, d] => return Err(bad(format!("direction {d:?} is neither asc nor desc"))),
                [] => return Err(bad("an empty sort key".into())),
                _ => return Err(bad(format!("{:?} is not `column [asc|desc]`", part.trim()))),
            };
            let column = SortColumn::named(name);
            if sort.keys.iter().any(|(c, _)| *c == column) {
                return Err(bad(format!("{name} is sorted on twice")));
            }
            if sort.keys.len() == MAX_SORT_KEYS {
                return Err(bad(format!("more than {MAX_SORT_KEYS} sort keys")));
            }
            sort.keys.push((column, dir));
        }
        Ok(sort)
    }
}

/// The most keys a sort parsed from text may have. Each key after the first multiplies the
/// condition a cursor's next page is read with (one term per key per key before it): a client
/// sending hundreds of alternating keys made every page a quadratic expression over every row
/// scanned (found in review, 2026-11-24). Eight is more than any index serves.
pub const MAX_SORT_KEYS: usize = 8;

/// Where a page ends: pass it to get the next page. Opaque text (safe in URLs and JSON).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Cursor(String);

impl Cursor {
    /// The text form.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A cursor from its text form, checked to be one the vault made.
    pub fn parse(text: &str) -> Result<Cursor, VaultError> {
        CursorRepr::decode(text)?;
        Ok(Cursor(text.to_string()))
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cursor({})", self.0)
    }
}

impl FromStr for Cursor {
    type Err = VaultError;
    fn from_str(s: &str) -> Result<Cursor, VaultError> {
        Cursor::parse(s)
    }
}

/// Which page to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageSpec {
    /// How many states at most (1 to [`MAX_PAGE_SIZE`]).
    pub size: u32,
    /// Continue after this cursor (from the previous page); `None` for the first page.
    pub after: Option<Cursor>,
}

impl PageSpec {
    /// The first page.
    pub fn first(size: u32) -> PageSpec {
        PageSpec { size, after: None }
    }

    /// The page after `cursor`.
    pub fn after(size: u32, cursor: Cursor) -> PageSpec {
        PageSpec { size, after: Some(cursor) }
    }
}

/// One page of results.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    /// The states, in the sort order.
    pub states: Vec<VaultState>,
    /// The cursor for the next page; `None` when this is the last.
    pub next: Option<Cursor>,
}

const CURSOR_VERSION: u8 = 1;
const MAX_CURSOR_BYTES: usize = 64 * 1024;

/// One sort key value in a cursor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum CursorValue {
    Null,
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
}

#[derive(Debug, Serialize, Deserialize)]
struct CursorRepr {
    version: u8,
    /// The first bytes of the hash of the sort order's description: a cursor only continues
    /// the order it was made for.
    sort: [u8; 8],
    values: Vec<CursorValue>,
}

impl CursorRepr {
    fn encode(&self) -> Cursor {
        Cursor(hex::encode(encoding::encode(self)))
    }

    fn decode(text: &str) -> Result<CursorRepr, VaultError> {
        let bad = |reason: &str| VaultError::InvalidCursor { reason: reason.to_string() };
        if text.len() > 2 * MAX_CURSOR_BYTES {
            return Err(bad("too long"));
        }
        let bytes = hex::decode(text).map_err(|_| bad("not a cursor the vault made (not hexadecimal)"))?;
        let repr: CursorRepr =
            encoding::decode_bounded(&bytes, MAX_CURSOR_BYTES).map_err(|_| bad("not a cursor the vault made (does not decode)"))?;
        if repr.version != CURSOR_VERSION {
            return Err(bad(&format!("cursor version {} is not {CURSOR_VERSION}", repr.version)));
        }
        Ok(repr)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyKind {
    Int,
    Text,
    Bytes,
}

/// One resolved sort key.
#[derive(Clone, Debug)]
struct Key {
    expr: String,
    kind: KeyKind,
    nullable: bool,
    dir: Direction,
}

/// A sort order resolved against the registry: the keys, the joins they need, and the
/// fingerprint cursors carry.
pub(crate) struct Plan {
    keys: Vec<Key>,
    joins: String,
    fingerprint: [u8; 8],
}

impl Plan {
    /// Resolves `sort`, adding the join arguments to `sql`.
    pub fn new(sort: &Sort, registry: &Registry, sql: &mut Sql) -> Result<Plan, VaultError> {
        let mut keys = Vec::new();
        let mut joins = String::new();
        let mut description = String::new();
        for (i, (column, dir)) in sort.keys.iter().enumerate() {
            let key = |expr: &str, kind, nullable| Key { expr: expr.to_string(), kind, nullable, dir: *dir };
            match column {
                SortColumn::RecordedAt => keys.push(key("s.recorded_at", KeyKind::Int, false)),
                SortColumn::ConsumedAt => keys.push(key("s.consumed_at", KeyKind::Int, true)),
                SortColumn::StateRef => {
                    keys.push(key("s.tx_id", KeyKind::Bytes, false));
                    keys.push(key("s.output_index", KeyKind::Int, false));
                }
                SortColumn::Quantity => keys.push(key("f.quantity", KeyKind::Int, true)),
                SortColumn::StateType => keys.push(key("s.type_id", KeyKind::Text, false)),
                SortColumn::Column(name) => {
                    if !registry.has_column(name) {
                        let mut known: Vec<String> = BUILTIN_SORT_NAMES.iter().map(|s| s.to_string()).collect();
                        if registry.known_columns() != "none" {
                            known.push(registry.known_columns());
                        }
                        return Err(VaultError::UnknownSortColumn { name: name.clone(), known: known.join(", ") });
                    }
                    let ty = registry.column_type(name)?;
                    let alias = format!("sc{i}");
                    let n = sql.arg(Arg::Text(name.clone()));
                    joins.push_str(&format!(" LEFT JOIN treaty_vault_columns {alias} ON {alias}.state_seq = s.seq AND {alias}.name = {n}"));
                    let kind = if ty == ColumnType::Integer { KeyKind::Int } else { KeyKind::Text };
                    keys.push(key(&value_column(&alias, ty), kind, true));
                    description.push_str(&format!("column:{name}:{}|", ty.name()));
                }
            }
            description.push_str(&format!("{column:?}:{dir:?};"));
        }
        // The recording sequence breaks ties: in the sort's direction when every key is a
        // column that is never NULL and all share one direction (the keyset condition is then
        // a row-value comparison an index can serve), else ascending (ties in recording order).
        let tie = match keys.first() {
            Some(first) if keys.iter().all(|k| !k.nullable && k.dir == first.dir) => first.dir,
            _ => Direction::Ascending,
        };
        keys.push(Key { expr: "s.seq".into(), kind: KeyKind::Int, nullable: false, dir: tie });
        let hash = SecureHash::sha256(description.as_bytes());
        let mut fingerprint = [0u8; 8];
        fingerprint.copy_from_slice(&hash.as_bytes()[..8]);
        Ok(Plan { keys, joins, fingerprint })
    }

    /// `ORDER BY` terms (NULLs last in both directions).
    fn order_by(&self) -> String {
        self.keys
            .iter()
            .map(|k| {
                if k.nullable {
                    format!("CASE WHEN {e} IS NULL THEN 1 ELSE 0 END ASC, {e} {d}", e = k.expr, d = k.dir.sql())
                } else {
                    format!("{} {}", k.expr, k.dir.sql())
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The condition "after the cursor" (keyset), its values added to `sql`.
    fn after(&self, cursor: &Cursor, sql: &mut Sql) -> Result<String, VaultError> {
        let repr = CursorRepr::decode(cursor.as_str())?;
        let other_sort = || VaultError::InvalidCursor { reason: "it was made for a different sort order".into() };
        if repr.sort != self.fingerprint || repr.values.len() != self.keys.len() {
            return Err(other_sort());
        }
        // Non-NULL keys in one direction: `(k1, k2, ...) > ($1, $2, ...)`.
        let first = self.keys.first().map(|k| k.dir);
        if self.keys.iter().all(|k| !k.nullable && Some(k.dir) == first) {
            let mut exprs = Vec::new();
            let mut params = Vec::new();
            for (key, value) in self.keys.iter().zip(&repr.values) {
                let arg = match (key.kind, value) {
                    (KeyKind::Int, CursorValue::Int(i)) => Arg::Int(*i),
                    (KeyKind::Text, CursorValue::Text(t)) => Arg::Text(t.clone()),
                    (KeyKind::Bytes, CursorValue::Bytes(b)) => Arg::Bytes(b.clone()),
                    _ => return Err(other_sort()),
                };
                exprs.push(key.expr.clone());
                params.push(sql.arg(arg));
            }
            let cmp = if first == Some(Direction::Descending) { "<" } else { ">" };
            return Ok(if exprs.len() == 1 {
                format!("{} {cmp} {}", exprs[0], params[0])
            } else {
                format!("({}) {cmp} ({})", exprs.join(", "), params.join(", "))
            });
        }
        // For each key: "equal to the cursor's value" and "after the cursor's value".
        let mut equal: Vec<String> = Vec::new();
        let mut alternatives: Vec<String> = Vec::new();
        for (key, value) in self.keys.iter().zip(&repr.values) {
            let cmp = if key.dir == Direction::Ascending { ">" } else { "<" };
            let arg = match (key.kind, value) {
                (_, CursorValue::Null) if key.nullable => None,
                (KeyKind::Int, CursorValue::Int(i)) => Some(Arg::Int(*i)),
                (KeyKind::Text, CursorValue::Text(t)) => Some(Arg::Text(t.clone())),
                (KeyKind::Bytes, CursorValue::Bytes(b)) => Some(Arg::Bytes(b.clone())),
                _ => return Err(other_sort()),
            };
            let e = &key.expr;
            let (eq, after) = match arg {
                // Among NULLs (sorted last) nothing comes after a NULL but the tie-breakers.
                None => (format!("{e} IS NULL"), None),
                Some(arg) => {
                    let p = sql.arg(arg);
                    let after = if key.nullable { format!("({e} {cmp} {p} OR {e} IS NULL)") } else { format!("{e} {cmp} {p}") };
                    (format!("{e} = {p}"), Some(after))
                }
            };
            if let Some(after) = after {
                let mut term = equal.clone();
                term.push(after);
                alternatives.push(format!("({})", term.join(" AND ")));
            }
            equal.push(eq);
        }
        Ok(if alternatives.is_empty() { "FALSE".into() } else { format!("({})", alternatives.join(" OR ")) })
    }

    fn select_keys(&self) -> String {
        self.keys.iter().map(|k| k.expr.as_str()).collect::<Vec<_>>().join(", ")
    }
}

/// Checks a page size.
pub(crate) fn check_page_size(size: u32) -> Result<(), VaultError> {
    if size == 0 || size > MAX_PAGE_SIZE { Err(VaultError::InvalidPageSize { size }) } else { Ok(()) }
}

/// The tables every state query reads: states, with their fungible columns left-joined.
pub(crate) const FROM_STATES: &str = "FROM treaty_vault_states s LEFT JOIN treaty_vault_fungible f ON f.state_seq = s.seq";

impl Vault {
    /// One page of the states matching `criteria`, in `sort` order.
    pub async fn query(&self, criteria: &Criteria, sort: &Sort, page: &PageSpec) -> Result<Page, VaultError> {
        check_page_size(page.size)?;
        let registry = self.registry();
        criteria.validate(&registry)?;
        let mut sql = Sql::default();
        let plan = Plan::new(sort, &registry, &mut sql)?;
        let filter = criteria.to_sql(&mut sql);
        let after = match &page.after {
            Some(cursor) => plan.after(cursor, &mut sql)?,
            None => "TRUE".into(),
        };
        let text = format!(
            "SELECT {STATE_COLUMNS}, {keys} {FROM_STATES}{joins} WHERE {filter} AND {after} ORDER BY {order} LIMIT {limit}",
            keys = plan.select_keys(),
            joins = plan.joins,
            order = plan.order_by(),
            limit = u64::from(page.size) + 1,
        );
        let what = "querying treaty_vault_states";
        let mut states = Vec::new();
        let mut last_keys = Vec::new();
        on_pool!(self.db(), pool => {
            // Only placeholders, fixed fragments and numbers are interpolated.
            let rows = bind_args!(sqlx::query(sqlx::AssertSqlSafe(text)), sql.args).fetch_all(pool).await.ctx(what)?;
            for (n, row) in rows.iter().enumerate() {
                if n == page.size as usize {
                    break;
                }
                states.push(state_row!(row, what)?.decode()?);
                if n + 1 == page.size as usize {
                    last_keys.clear();
                    for (i, key) in plan.keys.iter().enumerate() {
                        let col = STATE_COLUMN_COUNT + i;
                        let value = match key.kind {
                            KeyKind::Int => row.try_get::<Option<i64>, _>(col).ctx(what)?.map(CursorValue::Int),
                            KeyKind::Text => row.try_get::<Option<String>, _>(col).ctx(what)?.map(CursorValue::Text),
                            KeyKind::Bytes => row.try_get::<Option<Vec<u8>>, _>(col).ctx(what)?.map(CursorValue::Bytes),
                        };
                        last_keys.push(value.unwrap_or(CursorValue::Null));
                    }
                }
            }
            let more = rows.len() > page.size as usize;
            let next = more.then(|| CursorRepr { version: CURSOR_VERSION, sort: plan.fingerprint, values: last_keys }.encode());
            Ok(Page { states, next })
        })
    }

    /// How many states match `criteria`.
    pub async fn count(&self, criteria: &Criteria) -> Result<u64, VaultError> {
        let registry = self.registry();
        criteria.validate(&registry)?;
        let mut sql = Sql::default();
        let filter = criteria.to_sql(&mut sql);
        let text = format!("SELECT COUNT(*) {FROM_STATES} WHERE {filter}");
        let what = "counting treaty_vault_states";
        on_pool!(self.db(), pool => {
            let row = bind_args!(sqlx::query(sqlx::AssertSqlSafe(text)), sql.args).fetch_one(pool).await.ctx(what)?;
            Ok(u64::try_from(row.try_get::<i64, _>(0).ctx(what)?).unwrap_or(0))
        })
    }

    /// Every state matching `criteria`, in `sort` order, read `page_size` at a time: memory
    /// stays bounded by one page however many states match. Pages are read as the stream
    /// advances, so a state recorded meanwhile appears if it sorts after the current position.
    pub fn stream(&self, criteria: Criteria, sort: Sort, page_size: u32) -> Result<StateStream, VaultError> {
        check_page_size(page_size)?;
        let registry = self.registry();
        criteria.validate(&registry)?;
        Plan::new(&sort, &registry, &mut Sql::default())?;
        Ok(StateStream { vault: self.clone(), criteria, sort, page_size, next: None, buffer: VecDeque::new(), done: false })
    }
}

/// Every state matching a query, page by page ([`Vault::stream`]).
#[derive(Debug)]
pub struct StateStream {
    vault: Vault,
    criteria: Criteria,
    sort: Sort,
    page_size: u32,
    next: Option<Cursor>,
    buffer: VecDeque<VaultState>,
    done: bool,
}

impl StateStream {
    /// The next page (`None` when all have been read).
    pub async fn next_page(&mut self) -> Result<Option<Vec<VaultState>>, VaultError> {
        if !self.buffer.is_empty() {
            return Ok(Some(self.buffer.drain(..).collect()));
        }
        if self.done {
            return Ok(None);
        }
        let page = self.vault.query(&self.criteria, &self.sort, &PageSpec { size: self.page_size, after: self.next.take() }).await?;
        self.done = page.next.is_none();
        self.next = page.next;
        Ok(if page.states.is_empty() { None } else { Some(page.states) })
    }

    /// The next state (`None` when all have been read).
    pub async fn next(&mut self) -> Result<Option<VaultState>, VaultError> {
        if self.buffer.is_empty() {
            match self.next_page().await? {
                Some(states) => self.buffer.extend(states),
                None => return Ok(None),
            }
        }
        Ok(self.buffer.pop_front())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sort_specifications() {
        let s = Sort::parse("quantity desc, recorded_at,trade_ref ASC").unwrap();
        assert_eq!(
            s.keys(),
            &[
                (SortColumn::Quantity, Direction::Descending),
                (SortColumn::RecordedAt, Direction::Ascending),
                (SortColumn::Column("trade_ref".into()), Direction::Ascending)
            ]
        );
        assert_eq!(Sort::parse("  ").unwrap(), Sort::recording_order());
        for bad in ["quantity up", "quantity,", "a b c"] {
            let e = Sort::parse(bad).unwrap_err();
            assert!(matches!(e, VaultError::InvalidSort { .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let repr = CursorRepr { version: CURSOR_VERSION, sort: [1; 8], values: vec![CursorValue::Null, CursorValue::Int(-5)] };
        let c = repr.encode();
        assert_eq!(Cursor::parse(c.as_str()).unwrap(), c);
        for bad in ["", "zz", "00", &format!("{}00", c.as_str())] {
            let e = Cursor::parse(bad).unwrap_err();
            assert!(matches!(e, VaultError::InvalidCursor { .. }), "{bad:?}: {e}");
        }
    }

    #[test]
    fn keyset_condition_follows_the_order() {
        let registry = Registry::default();
        let mut sql = Sql::default();
        let plan = Plan::new(&Sort::by(SortColumn::Quantity, Direction::Descending), &registry, &mut sql).unwrap();
        let cursor = CursorRepr { version: CURSOR_VERSION, sort: plan.fingerprint, values: vec![CursorValue::Int(7), CursorValue::Int(3)] };
        let cond = plan.after(&cursor.encode(), &mut sql).unwrap();
        assert_eq!(cond, "(((f.quantity < $1 OR f.quantity IS NULL)) OR (f.quantity = $1 AND s.seq > $2))");
        let at_null = CursorRepr { version: CURSOR_VERSION, sort: plan.fingerprint, values: vec![CursorValue::Null, CursorValue::Int(3)] };
        let cond = plan.after(&at_null.encode(), &mut sql).unwrap();
        assert_eq!(cond, "((f.quantity IS NULL AND s.seq > $3))");
        let other = Plan::new(&Sort::recording_order(), &registry, &mut sql).unwrap();
        assert!(matches!(other.after(&cursor.encode(), &mut sql), Err(VaultError::InvalidCursor { .. })));

        // Keys that are never NULL, one direction: a row-value comparison, ties the same way.
        let mut sql = Sql::default();
        let plan = Plan::new(&Sort::by(SortColumn::StateRef, Direction::Descending), &registry, &mut sql).unwrap();
        let values = vec![CursorValue::Bytes(vec![1; 32]), CursorValue::Int(0), CursorValue::Int(9)];
        let cursor = CursorRepr { version: CURSOR_VERSION, sort: plan.fingerprint, values };
        assert_eq!(plan.after(&cursor.encode(), &mut sql).unwrap(), "(s.tx_id, s.output_index, s.seq) < ($1, $2, $3)");
        assert_eq!(plan.order_by(), "s.tx_id DESC, s.output_index DESC, s.seq DESC");
        let plan = Plan::new(&Sort::recording_order(), &registry, &mut sql).unwrap();
        let cursor = CursorRepr { version: CURSOR_VERSION, sort: plan.fingerprint, values: vec![CursorValue::Int(9)] };
        assert_eq!(plan.after(&cursor.encode(), &mut sql).unwrap(), "s.seq > $4");
    }
}
