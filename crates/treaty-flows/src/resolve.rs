//! Sending a transaction with its back-chain: `SendTransaction` / `ReceiveTransaction` and
//! `ResolveTransactions` (white paper "Data visibility and dependency resolution").
//!
//! The sender sends the transaction, then serves what the receiver asks for — transactions
//! and attachments in the dependency graph of what it sent, nothing else (no fishing). The
//! receiver walks the graph breadth first from the transaction's inputs and references,
//! downloading only what its ledger lacks, verifies everything in dependency order (contracts
//! in the sandbox, in parallel where the graph allows), and records it; a transaction that
//! fails is named in the error.
//!
//! A chain is deep, not wide: asking one level at a time would cost a round trip per
//! transaction. So each request carries a *prefetch* allowance: the sender adds that many
//! further ancestors of what was asked, breadth first. The receiver grows the allowance while
//! everything prefetched was new to it and shrinks it when prefetched transactions turn out
//! to be known already, so a long chain arrives in a few large batches and a nearly-known
//! graph costs little waste.
//!
//! Every decision that depends on the receiver's database ("which of these do I have?") is a
//! journaled side effect, so replay after a crash asks the same questions in the same order.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use treaty_core::{Attachment, LedgerTransaction, MapResolver, SecureHash, SignedTransaction, VerifyOptions, verify_transaction};

use crate::context::{FlowContext, Session};
use crate::error::FlowError;
use crate::ledger::Ledger;

/// What the receiver asks the sender for.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Request {
    /// These transactions, plus up to `prefetch` more of their ancestors, breadth first.
    Transactions { want: Vec<SecureHash>, prefetch: u32 },
    /// These attachments (as many as fit one message; the receiver asks again for the rest).
    Attachments(Vec<SecureHash>),
    /// Resolution is over: the sender stops serving.
    Done,
}

/// Items as the sender names them, with their bytes (decoded and checked by the receiver).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Batch {
    items: Vec<(SecureHash, Vec<u8>)>,
}

/// Most transaction ids in one request.
const MAX_WANT: usize = 2048;
/// Most direct dependencies pushed with a transaction, and their most bytes together.
const MAX_PUSHED: usize = 16;
const PUSH_BUDGET: usize = 256 * 1024;
/// The prefetch allowance of a first request, and its ceiling.
const FIRST_PREFETCH: u32 = 64;
const MAX_PREFETCH: u32 = 8192;

/// What [`receive_transaction`] got.
#[derive(Clone, Debug)]
pub struct ReceivedTransaction {
    /// The transaction, verified.
    pub transaction: SignedTransaction,
    /// It resolved (inputs, references, attachments).
    pub ledger_transaction: LedgerTransaction,
    /// How many back-chain transactions were downloaded, verified and recorded.
    pub resolved: usize,
}

/// Options for [`receive_transaction`].
#[derive(Clone, Debug, Default)]
pub struct ReceiveOptions {
    /// Record the transaction itself once verified (its back-chain is always recorded).
    pub record: bool,
    /// Required keys that may lack signatures (e.g. the notary's, before notarisation).
    pub allowed_missing: Vec<treaty_core::PublicKey>,
    /// Check only the signatures present: any required key may lack one (a transaction still
    /// collecting signatures).
    pub any_missing: bool,
}

/// The ids a transaction depends on: the transactions of its inputs and references.
pub fn dependencies(stx: &SignedTransaction) -> Vec<SecureHash> {
    let c = stx.tx().components();
    let mut seen = HashSet::new();
    c.inputs.iter().chain(&c.references).map(|r| r.txhash).filter(|h| seen.insert(*h)).collect()
}

fn invalid(id: &SecureHash, party: &Session, reason: impl Into<String>) -> FlowError {
    FlowError::InvalidTransaction { id: id.to_string(), party: party.party.to_string(), reason: reason.into() }
}

/// Sends `stx` on `session` and serves the receiver's requests for its back-chain until the
/// receiver is done. Returns how many transactions were served.
pub async fn send_transaction<L: Ledger>(
    ctx: &FlowContext,
    session: &Session,
    ledger: &Arc<L>,
    stx: &SignedTransaction,
) -> Result<usize, FlowError> {
    let budget = ledger.max_message_size().saturating_mul(3) / 4;
    let top = stx.to_bytes();
    // Read again on a replay (where the send itself is skipped): what was pushed is recorded
    // here for good, so the answer is the same, and `serve` needs it.
    let pushed = pushed_dependencies(ledger.as_ref(), stx, budget.saturating_sub(top.len()).min(PUSH_BUDGET)).await?;
    let mut batch = Batch { items: Vec::with_capacity(1 + pushed.len()) };
    batch.items.push((stx.id(), top));
    let mut txs = Vec::with_capacity(pushed.len());
    for (t, bytes) in pushed {
        batch.items.push((t.id(), bytes));
        txs.push(t);
    }
    ctx.send(session, &batch).await?;
    serve(ctx, session, ledger, stx, txs).await
}

/// The direct dependencies of `stx` recorded here, as many as fit `budget` bytes (at most
/// [`MAX_PUSHED`]): sent with the transaction, so a receiver that lacks only those (a payment
/// out of freshly issued cash, say) need not ask for them — a round trip saved. A receiver
/// that has them already ignores them; they tell it nothing it did not know.
async fn pushed_dependencies<L: Ledger>(
    ledger: &L,
    stx: &SignedTransaction,
    budget: usize,
) -> Result<Vec<(SignedTransaction, Vec<u8>)>, FlowError> {
    let deps = dependencies(stx);
    if deps.is_empty() || deps.len() > MAX_PUSHED || budget == 0 {
        return Ok(Vec::new());
    }
    let mut pushed = Vec::with_capacity(deps.len());
    let mut size = 0usize;
    for dep in ledger.transactions(&deps).await?.into_iter().flatten() {
        let bytes = dep.to_bytes();
        size += bytes.len();
        if size > budget {
            break;
        }
        pushed.push((dep, bytes));
    }
    Ok(pushed)
}

/// Serves the back-chain of `top` (already sent, with `pushed`) until the receiver says it is
/// done.
async fn serve<L: Ledger>(
    ctx: &FlowContext,
    session: &Session,
    ledger: &Arc<L>,
    top: &SignedTransaction,
    pushed: Vec<SignedTransaction>,
) -> Result<usize, FlowError> {
    let mut allowed: HashSet<SecureHash> = dependencies(top).into_iter().collect();
    let mut allowed_attachments: HashSet<SecureHash> = top.tx().components().attachments.iter().copied().collect();
    let mut sent: HashSet<SecureHash> = HashSet::new();
    for stx in pushed {
        sent.insert(stx.id());
        allowed.extend(dependencies(&stx));
        allowed_attachments.extend(stx.tx().components().attachments.iter().copied());
    }
    let budget = ledger.max_message_size().saturating_mul(3) / 4;
    loop {
        match ctx.receive::<Request>(session).await? {
            Request::Done => return Ok(sent.len()),
            Request::Transactions { want, prefetch } => {
                if let Some(x) = want.iter().find(|id| !allowed.contains(id)) {
                    return Err(FlowError::Exception(format!(
                        "{} asked for transaction {x}, which is not in the dependency graph of what was sent to it",
                        session.party
                    )));
                }
                let (batch, served) = transactions_batch(ledger.as_ref(), &want, prefetch, budget, &sent).await?;
                for stx in served {
                    sent.insert(stx.id());
                    allowed.extend(dependencies(&stx));
                    allowed_attachments.extend(stx.tx().components().attachments.iter().copied());
                }
                ctx.send(session, &batch).await?;
            }
            Request::Attachments(ids) => {
                if let Some(x) = ids.iter().find(|id| !allowed_attachments.contains(id)) {
                    return Err(FlowError::Exception(format!(
                        "{} asked for attachment {x}, which no transaction it was sent refers to",
                        session.party
                    )));
                }
                let mut batch = Batch::default();
                let mut size = 0usize;
                for (id, a) in ids.iter().zip(ledger.attachments(&ids).await?) {
                    let a = a.ok_or_else(|| FlowError::Exception(format!("attachment {id} is not stored here")))?;
                    if !batch.items.is_empty() && size + a.content.len() > budget {
                        break;
                    }
                    size += a.content.len();
                    batch.items.push((*id, a.content.to_vec()));
                }
                ctx.send(session, &batch).await?;
            }
        }
    }
}

/// The wanted transactions (as many as fit `budget`, at least one) and up to `prefetch` of
/// their ancestors not sent before, breadth first: the batch, and its transactions decoded.
async fn transactions_batch<L: Ledger>(
    ledger: &L,
    want: &[SecureHash],
    prefetch: u32,
    budget: usize,
    sent: &HashSet<SecureHash>,
) -> Result<(Batch, Vec<SignedTransaction>), FlowError> {
    let mut served = Vec::new();
    let wanted: HashSet<SecureHash> = want.iter().copied().collect();
    let mut batch = Batch::default();
    let (mut size, mut extra) = (0usize, 0u32);
    let mut visited: HashSet<SecureHash> = wanted.clone();
    // The ledger's dependency index names the ancestors ahead of the walk, so they load in
    // a few queries rather than one per level (a chain is one transaction per level).
    let mut preloaded: HashMap<SecureHash, SignedTransaction> = HashMap::new();
    if prefetch > 0 {
        let hint: Vec<SecureHash> = ledger.ancestors(want, prefetch as usize).await?.into_iter().filter(|id| !sent.contains(id)).collect();
        for (id, stx) in hint.iter().zip(ledger.transactions(&hint).await?) {
            if let Some(stx) = stx {
                preloaded.insert(*id, stx);
            }
        }
    }
    let mut level: Vec<SecureHash> = want.to_vec();
    while !level.is_empty() {
        let mut next = Vec::new();
        let rest: Vec<SecureHash> = level.iter().filter(|id| !preloaded.contains_key(id)).copied().collect();
        let mut loaded: HashMap<SecureHash, SignedTransaction> = HashMap::new();
        if !rest.is_empty() {
            for (id, stx) in rest.iter().zip(ledger.transactions(&rest).await?) {
                if let Some(stx) = stx {
                    loaded.insert(*id, stx);
                }
            }
        }
        for id in &level {
            let stx = preloaded.remove(id).or_else(|| loaded.remove(id));
            let is_wanted = wanted.contains(id);
            let Some(stx) = stx else {
                if is_wanted {
                    return Err(FlowError::Exception(format!("transaction {id} is not recorded here")));
                }
                continue;
            };
            let bytes = stx.to_bytes();
            if !batch.items.is_empty() && size + bytes.len() > budget {
                return Ok((batch, served));
            }
            if !is_wanted {
                if extra >= prefetch {
                    return Ok((batch, served));
                }
                extra += 1;
            }
            size += bytes.len();
            batch.items.push((*id, bytes));
            for d in dependencies(&stx) {
                if !sent.contains(&d) && visited.insert(d) {
                    next.push(d);
                }
            }
            served.push(stx);
        }
        if prefetch == 0 {
            break;
        }
        level = next;
    }
    Ok((batch, served))
}

/// Receives a transaction sent with [`send_transaction`], resolves and verifies its back-chain
/// and the transaction itself, and records them (the transaction itself if `options.record`).
pub async fn receive_transaction<L: Ledger>(
    ctx: &FlowContext,
    session: &Session,
    ledger: &Arc<L>,
    options: ReceiveOptions,
) -> Result<ReceivedTransaction, FlowError> {
    receive_verified(ctx, session, ledger, options, false).await
}

/// [`receive_transaction`] that records the transaction and only then tells the sender it is
/// done, so that `Done` acknowledges the recording (finality: one message fewer than a `Done`
/// followed by an acknowledgement).
pub(crate) async fn receive_and_record<L: Ledger>(
    ctx: &FlowContext,
    session: &Session,
    ledger: &Arc<L>,
) -> Result<ReceivedTransaction, FlowError> {
    receive_verified(ctx, session, ledger, ReceiveOptions { record: true, ..ReceiveOptions::default() }, true).await
}

async fn receive_verified<L: Ledger>(
    ctx: &FlowContext,
    session: &Session,
    ledger: &Arc<L>,
    options: ReceiveOptions,
    done_when_recorded: bool,
) -> Result<ReceivedTransaction, FlowError> {
    let (claimed, stx, pushed) = receive_top(ctx, session, ledger).await?;
    // An error here ends the flow, and the engine tells the sender, which stops serving.
    let downloaded = resolve(ctx, session, ledger, &stx, pushed).await?;
    if !done_when_recorded {
        ctx.send(session, &Request::Done).await?;
    }
    // Verifying and recording are not journaled: they give the same answer on replay, and
    // recording is idempotent.
    let verdicts = downloaded.verdicts.await.map_err(|e| FlowError::Invalid(format!("verification task failed: {e}")))??;
    let mut chain = downloaded.transactions;
    if let Some(stx) = chain.iter().find(|t| verdicts.failures.contains_key(&t.id())) {
        let e = &verdicts.failures[&stx.id()];
        return Err(invalid(
            &stx.id(),
            session,
            format!("it is in the back-chain of {} and fails verification: {} {e}", claimed, e.code()),
        ));
    }
    let (resolver, top, allowed_missing, any_missing) =
        (verdicts.resolver, stx.clone(), options.allowed_missing.clone(), options.any_missing);
    let l = ledger.clone();
    let ledger_transaction = tokio::task::spawn_blocking(move || {
        if !any_missing {
            return verify_transaction(&top, &resolver, l.verifier(), &VerifyOptions { allowed_missing });
        }
        let ltx = top.tx().to_ledger_transaction(&resolver)?;
        ltx.verify_structure()?;
        top.verify_signatures_present()?;
        ltx.verify_contracts(l.verifier())?;
        Ok(ltx)
    })
    .await
    .map_err(|e| FlowError::Invalid(format!("verification task failed: {e}")))?
    .map_err(|e| invalid(&claimed, session, format!("{} {e}", e.code())))?;
    network_notaries(&**ledger, &ledger_transaction).map_err(|why| invalid(&claimed, session, why))?;
    let count = chain.len();
    if options.record {
        chain.push(stx.clone());
    }
    ledger.record(&[], &chain).await?;
    if done_when_recorded {
        ctx.send(session, &Request::Done).await?;
    }
    Ok(ReceivedTransaction { transaction: stx, ledger_transaction, resolved: count })
}

/// Receives a transaction sent with [`send_transaction`] and checks only that it decodes and
/// matches its id: its back-chain is neither asked for nor verified (a non-validating notary
/// handed a whole transaction). The sender is told resolution is done.
pub async fn receive_unresolved<L: Ledger>(ctx: &FlowContext, session: &Session, ledger: &Arc<L>) -> Result<SignedTransaction, FlowError> {
    let (_, stx, _) = receive_top(ctx, session, ledger).await?;
    ctx.send(session, &Request::Done).await?;
    Ok(stx)
}

/// The transaction [`send_transaction`] opens with, decoded and checked against its id, and
/// the dependencies pushed with it (undecoded: they may be known here already).
async fn receive_top<L: Ledger>(
    ctx: &FlowContext,
    session: &Session,
    ledger: &Arc<L>,
) -> Result<(SecureHash, SignedTransaction, Vec<(SecureHash, Vec<u8>)>), FlowError> {
    let top: Batch = ctx.receive(session).await?;
    let mut items = top.items.into_iter();
    let Some((claimed, bytes)) = items.next() else {
        return Err(FlowError::Exception(format!("{} sent no transaction where one was expected", session.party)));
    };
    let pushed: Vec<(SecureHash, Vec<u8>)> = items.collect();
    if pushed.len() > MAX_PUSHED {
        return Err(FlowError::Exception(format!(
            "{} sent {} transactions with transaction {claimed}; at most {MAX_PUSHED} of its dependencies may come with it",
            session.party,
            pushed.len()
        )));
    }
    Ok((claimed, decode(&claimed, &bytes, session, ledger.as_ref())?, pushed))
}

fn decode<L: Ledger>(claimed: &SecureHash, bytes: &[u8], session: &Session, ledger: &L) -> Result<SignedTransaction, FlowError> {
    let stx = SignedTransaction::from_bytes(bytes, &ledger.limits())
        .map_err(|e| invalid(claimed, session, format!("it does not decode: {e}")))?;
    if stx.id() != *claimed {
        return Err(invalid(claimed, session, format!("its content does not match its id: it hashes to {}", stx.id())));
    }
    Ok(stx)
}

/// Transactions in one verification group past which the pipeline verifies them on the CPU
/// pool in parallel.
const PARALLEL_VERIFY: usize = 4;

/// Decodes a batch and checks every id (in parallel: computing an id hashes the transaction).
async fn decode_all<L: Ledger>(
    batch: Batch,
    session: &Session,
    ledger: &Arc<L>,
) -> Result<HashMap<SecureHash, SignedTransaction>, FlowError> {
    if batch.items.len() <= 4 {
        // Hashing a few transactions costs less than a hop to the blocking pool and back.
        return batch.items.iter().map(|(claimed, bytes)| Ok((*claimed, decode(claimed, bytes, session, ledger.as_ref())?))).collect();
    }
    let (session, ledger) = (session.clone(), ledger.clone());
    tokio::task::spawn_blocking(move || {
        use rayon::prelude::*;
        batch.items.par_iter().map(|(claimed, bytes)| Ok((*claimed, decode(claimed, bytes, &session, ledger.as_ref())?))).collect()
    })
    .await
    .map_err(|e| FlowError::Invalid(format!("decoding task failed: {e}")))?
}

/// The back-chain downloaded for a transaction, its verification under way.
struct Downloaded {
    /// New transactions, dependencies first.
    transactions: Vec<SignedTransaction>,
    /// The verification pipeline's result.
    verdicts: tokio::task::JoinHandle<Result<Verdicts, FlowError>>,
}

/// Work for the verification pipeline, which runs beside the download.
enum Job {
    /// Transactions that others point at (resolution only): recorded here, or downloaded.
    Known(Vec<SignedTransaction>),
    /// Attachments the transactions use.
    Attachments(Vec<Attachment>),
    /// Downloaded transactions whose dependencies are all in hand: verify them.
    Verify(Vec<SignedTransaction>),
}

/// Checks that every state of `ltx` this node will hold ([`Ledger::is_ours`]) is guarded by
/// one of the network's notaries ([`Ledger::is_network_notary`]; a notary change's outputs are
/// guarded by its new one). For the transaction received, not its back-chain: a chain may name
/// notaries the network has since retired, and nodes keep only the current parameters. The old
/// notary of a notary change is not checked either, so states can still be moved off a notary
/// the network retired.
fn network_notaries<L: Ledger>(ledger: &L, ltx: &LedgerTransaction) -> Result<(), String> {
    for o in &ltx.outputs {
        if o.data.participants.iter().any(|p| ledger.is_ours(p)) && !ledger.is_network_notary(&o.notary) {
            return Err(format!(
                "it gives this node a state guarded by {} (key {}), and that is not a notary of this network: its \
                 issuer could spend it twice",
                o.notary.name,
                o.notary.owning_key.short()
            ));
        }
    }
    Ok(())
}

/// What the verification pipeline found.
struct Verdicts {
    /// Everything the transactions point at, for verifying the top transaction.
    resolver: MapResolver,
    /// The transactions that failed, and why.
    failures: HashMap<SecureHash, treaty_core::TransactionError>,
}

/// Starts the verification pipeline: one task that takes jobs in order, verifying each group
/// on the CPU pool (in parallel within the group) while the flow downloads the next batch.
fn verifier<L: Ledger>(ledger: Arc<L>) -> (mpsc::UnboundedSender<Job>, tokio::task::JoinHandle<Result<Verdicts, FlowError>>) {
    let (jobs, mut rx) = mpsc::unbounded_channel::<Job>();
    let handle = tokio::spawn(async move {
        let mut resolver = MapResolver::default();
        let mut failures = HashMap::new();
        while let Some(job) = rx.recv().await {
            match job {
                Job::Known(txs) => txs.iter().for_each(|t| resolver.add_transaction(t.tx())),
                Job::Attachments(a) => a.into_iter().for_each(|x| resolver.add_attachment(x)),
                Job::Verify(group) => {
                    let ledger = ledger.clone();
                    let (back, failed) = tokio::task::spawn_blocking(move || {
                        use rayon::prelude::*;
                        let verifier = ledger.verifier();
                        let check = |stx: &SignedTransaction| {
                            verify_transaction(stx, &resolver, verifier, &VerifyOptions::default()).err().map(|e| (stx.id(), e))
                        };
                        // The first alone: it compiles the contract code, once, before the
                        // rest run in parallel and find it cached. A few run in place: handing
                        // them to the CPU pool costs more than it saves (see
                        // `treaty_core::transaction::PARALLEL_SIGNATURES`).
                        let mut failed: Vec<_> = group.first().and_then(check).into_iter().collect();
                        if group.len() > PARALLEL_VERIFY {
                            failed.extend(group[1..].par_iter().filter_map(check).collect::<Vec<_>>());
                        } else {
                            failed.extend(group.iter().skip(1).filter_map(check));
                        }
                        (resolver, failed)
                    })
                    .await
                    .map_err(|e| FlowError::Invalid(format!("verification task failed: {e}")))?;
                    resolver = back;
                    failures.extend(failed);
                }
            }
        }
        Ok(Verdicts { resolver, failures })
    });
    (jobs, handle)
}

/// The receiver's view of the graph while it downloads.
#[derive(Default)]
struct Walk {
    /// Downloaded transactions the ledger lacks.
    have: HashMap<SecureHash, SignedTransaction>,
    /// Ids downloaded or asked for.
    queued: HashSet<SecureHash>,
    /// Ids still to ask for, in order.
    queue: VecDeque<SecureHash>,
    /// Dependencies recorded here.
    local: HashSet<SecureHash>,
    /// Downloaded since the pipeline was last fed.
    new_txs: Vec<SecureHash>,
}

impl Walk {
    /// Takes the downloaded transactions `accepted` (already in `queued`) and walks into their
    /// dependencies: those `unknown` here come from `pool` (what the sender added unasked)
    /// when there, else are queued to ask for; the others are recorded here.
    fn absorb(
        &mut self,
        accepted: Vec<SignedTransaction>,
        pool: &mut HashMap<SecureHash, SignedTransaction>,
        unknown: &HashSet<SecureHash>,
    ) {
        let mut stack = accepted;
        while let Some(stx) = stack.pop() {
            for d in dependencies(&stx) {
                if self.have.contains_key(&d) || self.queued.contains(&d) || self.local.contains(&d) {
                    continue;
                }
                if !unknown.contains(&d) {
                    self.local.insert(d);
                    continue;
                }
                match pool.remove(&d) {
                    Some(p) => stack.push(p),
                    None => {
                        self.queued.insert(d);
                        self.queue.push_back(d);
                    }
                }
            }
            self.queued.insert(stx.id());
            self.new_txs.push(stx.id());
            self.have.insert(stx.id(), stx);
        }
    }
}

/// Downloads what the ledger lacks of `top`'s back-chain (transactions and attachments) from
/// the sender on `session`, handing each transaction to the verification pipeline as soon as
/// everything it points at is in hand. `pushed` came with `top` (some of its direct
/// dependencies): those the ledger lacks are taken from there rather than asked for.
async fn resolve<L: Ledger>(
    ctx: &FlowContext,
    session: &Session,
    ledger: &Arc<L>,
    top: &SignedTransaction,
    pushed: Vec<(SecureHash, Vec<u8>)>,
) -> Result<Downloaded, FlowError> {
    let (jobs, verdicts) = verifier(ledger.clone());
    let send_job = |job: Job| jobs.send(job).map_err(|_| FlowError::Invalid("the verification pipeline stopped".into()));
    let mut w = Walk::default();
    // Dependencies recorded here handed to the pipeline.
    let mut local_sent: HashSet<SecureHash> = HashSet::new();
    let mut attachments_seen: HashSet<SecureHash> = HashSet::new();
    let mut undispatched: Vec<SecureHash> = Vec::new();

    let top_deps = dependencies(top);
    if let Some((x, _)) = pushed.iter().find(|(id, _)| !top_deps.contains(id)) {
        return Err(FlowError::Exception(format!(
            "{} sent transaction {x} with transaction {}, which does not depend on it",
            session.party,
            top.id()
        )));
    }
    let mut pushed = if pushed.is_empty() { HashMap::new() } else { decode_all(Batch { items: pushed }, session, ledger).await? };
    // One question for the transaction's dependencies and for those of what came with it.
    let mut question = top_deps.clone();
    question.extend(pushed.values().flat_map(dependencies));
    question.sort();
    question.dedup();
    let unknown: HashSet<SecureHash> = unrecorded(ctx, ledger, "resolve.unrecorded.0", question).await?.into_iter().collect();
    let mut accepted = Vec::new();
    for d in top_deps {
        if !unknown.contains(&d) {
            w.local.insert(d);
        } else if let Some(stx) = pushed.remove(&d) {
            w.queued.insert(d);
            accepted.push(stx);
        } else if w.queued.insert(d) {
            w.queue.push_back(d);
        }
    }
    w.absorb(accepted, &mut HashMap::new(), &unknown);
    let mut prefetch = FIRST_PREFETCH;
    let mut round = 0usize;
    loop {
        // Hand over what the transactions of the last round need, then those now ready.
        let mut attachment_ids: Vec<SecureHash> = w
            .new_txs
            .iter()
            .filter_map(|id| w.have.get(id))
            .chain(std::iter::once(top).filter(|_| round == 0))
            .flat_map(|t| t.tx().components().attachments.iter().copied())
            .filter(|a| attachments_seen.insert(*a))
            .collect();
        attachment_ids.sort();
        if !attachment_ids.is_empty() {
            let attachments = fetch_attachments(ctx, session, ledger, &format!("resolve.attachments.{round}"), attachment_ids).await?;
            send_job(Job::Attachments(attachments))?;
        }
        let mut known: Vec<SecureHash> = w.local.iter().filter(|d| !local_sent.contains(*d)).copied().collect();
        if !known.is_empty() {
            known.sort();
            let loaded = ledger.transactions(&known).await?;
            let mut txs = Vec::with_capacity(known.len());
            for (id, stx) in known.iter().zip(loaded) {
                txs.push(stx.ok_or_else(|| FlowError::Invalid(format!("transaction {id} was recorded here but is gone")))?);
                local_sent.insert(*id);
            }
            send_job(Job::Known(txs))?;
        }
        if !w.new_txs.is_empty() {
            send_job(Job::Known(w.new_txs.iter().filter_map(|id| w.have.get(id).cloned()).collect()))?;
        }
        undispatched.append(&mut w.new_txs);
        let (ready, waiting): (Vec<SecureHash>, Vec<SecureHash>) = undispatched
            .iter()
            .partition(|id| w.have.get(*id).is_some_and(|t| dependencies(t).iter().all(|d| w.have.contains_key(d) || w.local.contains(d))));
        undispatched = waiting;
        if !ready.is_empty() {
            send_job(Job::Verify(ready.iter().filter_map(|id| w.have.get(id).cloned()).collect()))?;
        }
        if w.queue.is_empty() {
            break;
        }

        round += 1;
        let want: Vec<SecureHash> = w.queue.drain(..w.queue.len().min(MAX_WANT)).collect();
        ctx.send(session, &Request::Transactions { want: want.clone(), prefetch }).await?;
        let batch: Batch = ctx.receive(session).await?;
        let mut pool: HashMap<SecureHash, SignedTransaction> = decode_all(batch, session, ledger).await?;
        // Wanted ones the sender could not fit come first next round.
        let mut accepted = Vec::new();
        for id in want.iter().rev() {
            match pool.remove(id) {
                Some(stx) => accepted.push(stx),
                None => w.queue.push_front(*id),
            }
        }
        if accepted.is_empty() {
            return Err(FlowError::Exception(format!("{} sent none of the {} transactions asked for", session.party, want.len())));
        }
        // One question to the database per round: which of everything this batch mentions
        // (the prefetched transactions and every dependency) is recorded already?
        let mut mentioned: Vec<SecureHash> = pool.keys().copied().collect();
        for stx in accepted.iter().chain(pool.values()) {
            mentioned
                .extend(dependencies(stx).into_iter().filter(|d| !w.have.contains_key(d) && !w.queued.contains(d) && !w.local.contains(d)));
        }
        mentioned.sort();
        mentioned.dedup();
        let unknown: HashSet<SecureHash> =
            unrecorded(ctx, ledger, &format!("resolve.unrecorded.{round}"), mentioned).await?.into_iter().collect();
        // Walk from what was asked into what was prefetched, as far as it is new here.
        w.absorb(accepted, &mut pool, &unknown);
        // Prefetched transactions left over were known here already: prefetch less.
        prefetch = if pool.is_empty() { (prefetch.max(1) * 2).min(MAX_PREFETCH) } else { prefetch / 4 };
    }
    if !undispatched.is_empty() {
        send_job(Job::Verify(undispatched.iter().filter_map(|id| w.have.get(id).cloned()).collect()))?;
    }
    drop(jobs);
    Ok(Downloaded { transactions: dependency_order(w.have), verdicts })
}

/// Those of `ids` the ledger has not recorded (a journaled question). "All recorded" is
/// final — transactions are never unrecorded — so that answer costs no write of its own
/// ([`FlowContext::side_effect_settled`]); any other could change, and is durable at once.
async fn unrecorded<L: Ledger>(ctx: &FlowContext, ledger: &Arc<L>, key: &str, ids: Vec<SecureHash>) -> Result<Vec<SecureHash>, FlowError> {
    if ids.is_empty() {
        return Ok(ids);
    }
    let effect = || {
        let ledger = ledger.clone();
        async move {
            let recorded = ledger.recorded(&ids).await?;
            Ok(ids.into_iter().zip(recorded).filter(|(_, r)| !r).map(|(id, _)| id).collect())
        }
    };
    ctx.side_effect_settled(key, effect, Vec::is_empty).await
}

/// `txs` ordered so every transaction comes after those of them it depends on (ties by id).
fn dependency_order(mut txs: HashMap<SecureHash, SignedTransaction>) -> Vec<SignedTransaction> {
    let mut ids: Vec<SecureHash> = txs.keys().copied().collect();
    ids.sort();
    let mut done: HashSet<SecureHash> = HashSet::with_capacity(ids.len());
    let mut out = Vec::with_capacity(ids.len());
    for root in ids {
        // Iterative post-order depth-first walk (chains are deep: no recursion).
        let mut stack: Vec<(SecureHash, bool)> = vec![(root, false)];
        while let Some((id, expanded)) = stack.pop() {
            if done.contains(&id) {
                continue;
            }
            if expanded {
                done.insert(id);
                if let Some(stx) = txs.remove(&id) {
                    out.push(stx);
                }
                continue;
            }
            let Some(stx) = txs.get(&id) else { continue };
            stack.push((id, true));
            let mut deps = dependencies(stx);
            deps.sort();
            for d in deps.into_iter().rev() {
                if !done.contains(&d) && txs.contains_key(&d) {
                    stack.push((d, false));
                }
            }
        }
    }
    out
}

/// Of the attachments `ids`, downloads those the ledger lacks (checked) and stores them;
/// returns them all.
///
/// Which are missing is decided once (journaled, so a replay asks for the same ones), and the
/// stored ones are read after that decision: another flow may record one of them meanwhile
/// (concurrent payments resolving the same contract), and an attachment read as missing
/// before and as stored after was in neither list — its transaction then failed to verify
/// with `TX-UNRESOLVED-ATTACHMENT`. Attachments are never deleted, so one stored when the
/// decision was made is still stored.
///
/// An attachment another flow on this node is downloading is waited for rather than asked
/// for again ([`crate::fetches`]), and one downloaded is stored at once, before the
/// transaction that needs it is verified, so that those waiting find it. That stores nothing
/// a counterparty could not make this node store anyway: an attachment is content checked
/// against its id and its format, it has no effect on the ledger until a transaction that
/// verifies uses it, and the flow's journal kept its bytes before too.
async fn fetch_attachments<L: Ledger>(
    ctx: &FlowContext,
    session: &Session,
    ledger: &Arc<L>,
    key: &str,
    ids: Vec<SecureHash>,
) -> Result<Vec<Attachment>, FlowError> {
    let all = ids.clone();
    let mut claim = None;
    let effect = || {
        let (ledger, claim) = (ledger.clone(), &mut claim);
        async move {
            let stored = ledger.attachments(&ids).await?;
            let mut missing: Vec<SecureHash> = ids.into_iter().zip(stored).filter(|(_, a)| a.is_none()).map(|(id, _)| id).collect();
            if missing.is_empty() {
                return Ok(missing);
            }
            let others = ledger.attachment_fetches().others(&missing);
            if !others.is_empty() {
                let waited = async {
                    for other in others {
                        other.await;
                    }
                };
                // Past the wait, what is still missing is asked for here.
                let _ = tokio::time::timeout(crate::fetches::WAIT_FOR_OTHERS, waited).await;
                let now = ledger.attachments(&missing).await?;
                missing = missing.into_iter().zip(now).filter(|(_, a)| a.is_none()).map(|(id, _)| id).collect();
            }
            // What another flow began downloading since is downloaded here too: rare, and harmless.
            *claim = Some(ledger.attachment_fetches().claim(&missing));
            Ok(missing)
        }
    };
    // "None missing" is final (attachments are never deleted): it costs no write of its own.
    let mut missing: VecDeque<SecureHash> = ctx.side_effect_settled(key, effect, Vec::is_empty).await?.into();
    let present: Vec<SecureHash> = all.into_iter().filter(|id| !missing.contains(id)).collect();
    let mut out = Vec::with_capacity(present.len() + missing.len());
    for (id, a) in present.iter().zip(ledger.attachments(&present).await?) {
        out.push(a.ok_or_else(|| FlowError::Invalid(format!("attachment {id} was stored here but is gone")))?);
    }
    while !missing.is_empty() {
        let want: Vec<SecureHash> = missing.iter().copied().collect();
        ctx.send(session, &Request::Attachments(want)).await?;
        let batch: Batch = ctx.receive(session).await?;
        if batch.items.is_empty() {
            return Err(FlowError::Exception(format!("{} sent none of the {} attachments asked for", session.party, missing.len())));
        }
        let mut got = Vec::with_capacity(batch.items.len());
        for (claimed, bytes) in batch.items {
            let Some(pos) = missing.iter().position(|m| *m == claimed) else {
                return Err(FlowError::Exception(format!("{} sent attachment {claimed}, which was not asked for", session.party)));
            };
            missing.remove(pos);
            let actual = SecureHash::sha256(&bytes);
            if actual != claimed {
                return Err(FlowError::Exception(format!(
                    "attachment {claimed} from {} does not match its id: it hashes to {actual}",
                    session.party
                )));
            }
            let a = ledger
                .check_attachment(&bytes)
                .map_err(|e| FlowError::Exception(format!("attachment {claimed} from {}: {e}", session.party)))?;
            got.push(a);
        }
        // Stored before the claim ends (with this function), so flows waiting for it find it.
        // Idempotent: a replay stores the same bytes again.
        ledger.record(&got, &[]).await?;
        out.extend(got);
    }
    drop(claim);
    Ok(out)
}
