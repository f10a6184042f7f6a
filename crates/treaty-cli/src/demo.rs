//! `treaty demo`: Treaty's main job on embedded defaults, end to end, with a readable report.
//!
//! Today the demo exercises the ledger core and the contract sandbox in one process (the cash
//! contract runs as WebAssembly, built from `apps/finance/contract`): certified-looking identities with
//! fresh keys (one a 2-of-3 composite key), a cash issue, a payment with change signed by two of
//! three officers, the notary's tear-off view, a double spend refused, a forged transaction and
//! a contract violation caught, a counterparty verifying the back-chain, and a payment chain
//! verified end to end to show throughput. As the network, flows and notary services land, the
//! demo moves onto real node processes.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use treaty_core::*;

use treaty_finance_contracts::{CASH, Cash, CashCommand};
use treaty_sandbox::{AttachmentStore, MemoryAttachmentStore, Sandbox, bundle};

/// A named participant with its signing keys.
struct Actor {
    party: Party,
    signers: Vec<KeyPair>,
}

fn fresh_key(scheme: SignatureScheme) -> Result<KeyPair> {
    // A random 32-byte string is a valid P-256 scalar with overwhelming probability; retry otherwise.
    for _ in 0..8 {
        if let Ok(k) = KeyPair::from_seed(scheme, rand::random::<[u8; 32]>()) {
            return Ok(k);
        }
    }
    bail!("could not generate a {scheme:?} key")
}

fn actor(name: &str, scheme: SignatureScheme) -> Result<Actor> {
    let key = fresh_key(scheme)?;
    Ok(Actor { party: Party { name: name.parse()?, owning_key: key.public() }, signers: vec![key] })
}

fn salt() -> PrivacySalt {
    loop {
        let s = rand::random::<[u8; 32]>();
        if s != [0u8; 32] {
            return PrivacySalt(s);
        }
    }
}

fn now() -> Timestamp {
    let micros = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0);
    Timestamp(micros)
}

/// A stand-in for the notary service (which lands with the notary issue): an in-memory
/// uniqueness log plus the checks a non-validating notary makes on its tear-off view.
struct DemoNotary {
    actor: Actor,
    consumed: BTreeMap<StateRef, SecureHash>,
}

impl DemoNotary {
    fn notarise(&mut self, stx: &SignedTransaction) -> Result<TransactionSignature, String> {
        let view = FilteredTransaction::reveal_groups(stx.tx(), &FilteredTransaction::NOTARY_GROUPS);
        view.verify().map_err(|e| e.to_string())?;
        for g in FilteredTransaction::NOTARY_GROUPS {
            view.check_all_visible(g).map_err(|e| e.to_string())?;
        }
        if view.notary().map_err(|e| e.to_string())?.as_ref() != Some(&self.actor.party) {
            return Err("wrong notary".into());
        }
        if let Some(w) = view.time_window().map_err(|e| e.to_string())?
            && !w.contains(now())
        {
            return Err(format!("time window {w} does not contain the notary's time"));
        }
        let inputs = view.inputs().map_err(|e| e.to_string())?;
        let conflicts: Vec<String> = inputs
            .iter()
            .filter_map(|r| {
                self.consumed.get(r).filter(|by| **by != view.id).map(|by| format!("state {r} already consumed by transaction {by}"))
            })
            .collect();
        if !conflicts.is_empty() {
            return Err(format!("Conflict: {}", conflicts.join("; ")));
        }
        for r in inputs {
            self.consumed.insert(r, view.id);
        }
        Ok(self.actor.signers[0].sign_transaction(&view.id, PLATFORM_VERSION))
    }
}

struct Report {
    json: bool,
    steps: Vec<Value>,
}

impl Report {
    fn step(&mut self, name: &str, text: String, data: Value) {
        if !self.json {
            println!("  ✔ {text}");
        }
        let mut obj = json!({ "step": name, "summary": text });
        if let (Some(o), Value::Object(d)) = (obj.as_object_mut(), data) {
            o.extend(d);
        }
        self.steps.push(obj);
    }
    fn heading(&self, text: &str) {
        if !self.json {
            println!("\n{text}");
        }
    }
}

fn cash_state(amount: Amount<Issued<Currency>>, owner: &Party, notary: &Party, code: &SecureHash) -> TransactionState {
    TransactionState::new(&Cash { amount, owner: owner.clone().into() }, CASH, notary.clone(), AttachmentConstraint::Hash(*code))
}

/// The finance contract module packed as an attachment, checked and stored.
fn cash_attachment(store: &MemoryAttachmentStore) -> Result<Attachment> {
    let manifest = bundle::Manifest {
        name: "treaty-finance".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        contracts: vec![CASH.into()],
        module: Some(bundle::MODULE.into()),
        data_files: vec![],
    };
    let bytes = bundle::pack(&manifest, Some(treaty_contracts::FINANCE_WASM), &BTreeMap::new(), &[]);
    let id = store.upload(&bytes)?;
    store.get(&id).context("attachment just stored")
}

fn sign(stx: SignedTransaction, keys: &[&KeyPair]) -> SignedTransaction {
    let id = stx.id();
    stx.with_signatures(keys.iter().map(|k| k.sign_transaction(&id, PLATFORM_VERSION)))
}

/// Runs the demo.
pub fn run(json_out: bool, chain_len: usize) -> Result<()> {
    let started = Instant::now();
    // Every party here lives in this one process, and each must check what the others signed
    // on the curve: no answers from the cache of signatures this process made or checked.
    treaty_core::crypto::set_signature_cache(false);
    let mut r = Report { json: json_out, steps: Vec::new() };
    let params = NetworkParameters::default();
    let store = MemoryAttachmentStore::new(params.clone());
    let code = cash_attachment(&store)?;
    let contracts = Sandbox::new(params)?;
    let mut ledger = MapResolver::default();
    ledger.add_attachment(code.clone());

    if !json_out {
        println!("Treaty demo — the ledger core and the contract sandbox, end to end (treaty {})", env!("CARGO_PKG_VERSION"));
    }
    r.heading("0. Contract code");
    r.step(
        "attachment",
        format!(
            "{CASH} packed as attachment {} ({} KiB of WebAssembly), checked and stored",
            code.id.short(),
            treaty_contracts::FINANCE_WASM.len() / 1024
        ),
        json!({ "attachment": code.id.to_string(), "module_bytes": treaty_contracts::FINANCE_WASM.len() }),
    );
    r.heading("1. Identities");
    let bank = actor("O=Bank of Treaty,L=London,C=GB", SignatureScheme::Ed25519)?;
    let bob = actor("O=Bob Trading,L=New York,C=US", SignatureScheme::EcdsaP256Sha256)?;
    let mut notary = DemoNotary { actor: actor("O=Notary Service,L=Zurich,C=CH", SignatureScheme::Ed25519)?, consumed: BTreeMap::new() };
    let officers =
        [fresh_key(SignatureScheme::Ed25519)?, fresh_key(SignatureScheme::EcdsaP256Sha256)?, fresh_key(SignatureScheme::Ed25519)?];
    let treasury = CompositeKey::build(2, officers.iter().map(|k| WeightedKey { key: k.public(), weight: 1 }).collect())?;
    let alice = Actor { party: Party { name: "O=Alice Corp,L=London,C=GB".parse()?, owning_key: treasury }, signers: Vec::new() };
    for a in [&bank, &alice, &bob, &notary.actor] {
        r.step(
            "identity",
            format!("{} — key {}", a.party.name, a.party.owning_key.short()),
            json!({ "name": a.party.name.to_string(), "key": a.party.owning_key.to_string() }),
        );
    }
    let notary_party = notary.actor.party.clone();
    let usd = Issued { issuer: PartyAndReference { party: bank.party.clone().into(), reference: vec![1] }, product: Currency::new("USD")? };

    r.heading("2. The bank issues 1,000.00 USD to Alice Corp");
    let issue = TransactionBuilder::new(Some(notary_party.clone()))
        .output(cash_state(Amount::parse_decimal("1000.00", usd.clone())?, &alice.party, &notary_party, &code.id))
        .command(Command::new(&CashCommand::Issue, vec![bank.party.owning_key.clone()]))
        .attachment(code.id)
        .build(salt())?;
    let issue = sign(SignedTransaction::new(issue, vec![]), &[&bank.signers[0]]);
    verify_transaction(&issue, &ledger, &contracts, &VerifyOptions::default()).context("issue should verify")?;
    ledger.add_transaction(issue.tx());
    r.step(
        "issue",
        format!("issue {} verified (signed by the bank)", issue.id().short()),
        json!({ "tx_id": issue.id().to_string(), "amount": "1000.00 USD" }),
    );

    r.heading("3. Alice Corp pays Bob 300.00 USD, two of three treasury officers sign");
    let coin = StateRef { txhash: issue.id(), index: 0 };
    let pay = TransactionBuilder::new(Some(notary_party.clone()))
        .input(coin)
        .output(cash_state(Amount::parse_decimal("300.00", usd.clone())?, &bob.party, &notary_party, &code.id))
        .output(cash_state(Amount::parse_decimal("700.00", usd.clone())?, &alice.party, &notary_party, &code.id))
        .command(Command::new(&CashCommand::Move, vec![alice.party.owning_key.clone()]))
        .attachment(code.id)
        .time_window(TimeWindow::around(now(), 30_000_000)?)
        .summary(format!("Move {}", Amount::parse_decimal("1000.00", usd.clone())?))
        .build(salt())?;
    let pay_id = pay.id();
    let one_officer = sign(SignedTransaction::new(pay.clone(), vec![]), &[&officers[0]]);
    let missing = one_officer.missing_keys(&one_officer.tx().command_and_notary_keys(), std::slice::from_ref(&notary_party.owning_key));
    r.step(
        "threshold",
        format!("one officer's signature is not enough: missing {}", missing.iter().map(PublicKey::short).collect::<Vec<_>>().join(", ")),
        json!({ "missing": missing.len() }),
    );
    let pay = sign(one_officer, &[&officers[2]]);
    let allow_notary = VerifyOptions { allowed_missing: vec![notary_party.owning_key.clone()] };
    verify_transaction(&pay, &ledger, &contracts, &allow_notary).context("payment should verify before notarisation")?;
    r.step(
        "pay-signed",
        format!(
            "payment {} verified with 2 of 3 officers; summary shown to signers: {:?}",
            pay_id.short(),
            pay.tx().components().summaries
        ),
        json!({ "tx_id": pay_id.to_string() }),
    );

    r.heading("4. The notary sees only a tear-off, checks it, and signs");
    let view = FilteredTransaction::reveal_groups(pay.tx(), &FilteredTransaction::NOTARY_GROUPS);
    let (seen, whole) = (encoding::encode(&view).len(), pay.tx().bytes().len());
    r.step(
        "tear-off",
        format!("notary view: {} input(s), notary, time window — no outputs, no commands ({seen} of {whole} bytes plus proofs)", view.inputs()?.len()),
        json!({ "revealed_groups": view.groups.iter().map(|g| g.group).collect::<Vec<_>>(), "view_bytes": seen, "transaction_bytes": whole }),
    );
    let notary_sig = notary.notarise(&pay).map_err(|e| anyhow::anyhow!("notarisation failed: {e}"))?;
    let pay = pay.with_signature(notary_sig);
    let ltx = verify_transaction(&pay, &ledger, &contracts, &VerifyOptions::default()).context("notarised payment should verify")?;
    let run = contracts.run_contract(CASH, &ltx)?;
    r.step(
        "sandbox",
        format!(
            "{CASH} accepted it in the WebAssembly sandbox using {} fuel (module compiled once, {} cached)",
            run.fuel,
            contracts.cached()
        ),
        json!({ "fuel": run.fuel, "cached_modules": contracts.cached() }),
    );
    ledger.add_transaction(pay.tx());
    let bob_cash: Vec<Cash> = ltx.outputs_of()?;
    r.step("final", format!("payment {} is final: Bob holds {}, Alice Corp holds {} in change", pay_id.short(), bob_cash[0].amount, bob_cash[1].amount), json!({ "tx_id": pay_id.to_string(), "bob": bob_cash[0].amount.to_decimal_string(), "alice_change": bob_cash[1].amount.to_decimal_string() }));

    r.heading("5. Bob checks the back-chain he was sent");
    let mut bobs_ledger = MapResolver::default();
    bobs_ledger.add_attachment(code.clone());
    let missing = verify_transaction(&pay, &bobs_ledger, &contracts, &VerifyOptions::default()).expect_err("Bob lacks the issue");
    verify_transaction(&issue, &bobs_ledger, &contracts, &VerifyOptions::default())?;
    bobs_ledger.add_transaction(issue.tx());
    verify_transaction(&pay, &bobs_ledger, &contracts, &VerifyOptions::default())?;
    r.step(
        "resolve",
        format!("without the issue Bob gets \"{missing}\"; with it, the chain verifies"),
        json!({ "error_without_chain": missing.code() }),
    );

    r.heading("6. What the ledger refuses");
    let again = TransactionBuilder::new(Some(notary_party.clone()))
        .input(coin)
        .output(cash_state(Amount::parse_decimal("1000.00", usd.clone())?, &alice.party, &notary_party, &code.id))
        .command(Command::new(&CashCommand::Move, vec![alice.party.owning_key.clone()]))
        .attachment(code.id)
        .summary(format!("Move {}", Amount::parse_decimal("1000.00", usd.clone())?))
        .build(salt())?;
    let again = sign(SignedTransaction::new(again, vec![]), &[&officers[0], &officers[1]]);
    verify_transaction(&again, &ledger, &contracts, &allow_notary).context("the double spend is otherwise valid")?;
    let conflict = notary.notarise(&again).expect_err("double spend must be refused");
    r.step("double-spend", format!("double spend refused by the notary — {conflict}"), json!({ "refused": true, "reason": conflict }));

    let mut forged_b = TransactionBuilder::new(Some(notary_party.clone()));
    let c = pay.tx().components();
    forged_b.inputs = c.inputs.clone();
    forged_b.outputs = c.outputs.clone();
    forged_b.outputs[0] = cash_state(Amount::parse_decimal("3000.00", usd.clone())?, &bob.party, &notary_party, &code.id);
    forged_b.commands = c.commands.clone();
    forged_b.attachments = c.attachments.clone();
    forged_b.time_window = c.time_window;
    forged_b.summaries = c.summaries.clone();
    let forged = SignedTransaction::new(forged_b.build(*pay.tx().privacy_salt())?, pay.sigs().to_vec());
    let err = verify_transaction(&forged, &ledger, &contracts, &VerifyOptions::default()).expect_err("forgery must fail");
    r.step(
        "forgery",
        format!("Bob's copy edited to 3000.00 USD keeps the old signatures: [{}] {err}", err.code()),
        json!({ "code": err.code() }),
    );

    let greedy = TransactionBuilder::new(Some(notary_party.clone()))
        .input(StateRef { txhash: pay_id, index: 0 })
        .output(cash_state(Amount::parse_decimal("3000.00", usd.clone())?, &bob.party, &notary_party, &code.id))
        .command(Command::new(&CashCommand::Move, vec![bob.party.owning_key.clone()]))
        .attachment(code.id)
        .build(salt())?;
    let greedy = sign(SignedTransaction::new(greedy, vec![]), &[&bob.signers[0]]);
    let err = verify_transaction(&greedy, &ledger, &contracts, &allow_notary).expect_err("printing money must fail");
    r.step("contract", format!("Bob turning 300.00 into 3000.00: [{}] {err}", err.code()), json!({ "code": err.code() }));

    r.heading(&format!("7. A chain of {chain_len} payments, each verified in full (contracts in the sandbox)"));
    let setup = ChainSetup {
        bank: &bank,
        bob: &bob,
        notary: &notary_party,
        notary_key: &notary.actor.signers[0],
        usd: &usd,
        contracts: &contracts,
        code: &code,
    };
    let (elapsed, verified) = payment_chain(chain_len, &setup)?;
    let rate = verified as f64 / elapsed.max(1e-9);
    r.step(
        "chain",
        format!("{verified} transactions verified (structure, signatures, contracts) in {:.3} s — {:.0} tx/s", elapsed, rate),
        json!({ "transactions": verified, "seconds": elapsed, "per_second": rate }),
    );

    r.heading("8. Real nodes and a notary: certificates, network map, mutual TLS, SQLite, durable flows, a cash payment");
    real_nodes(&mut r)?;

    let total = started.elapsed().as_secs_f64();
    if json_out {
        println!("{}", serde_json::to_string_pretty(&json!({ "ok": true, "seconds": total, "steps": r.steps }))?);
    } else {
        println!("\nDone in {total:.2} s. Every refusal above names its reason; the temporary network was removed.");
    }
    Ok(())
}

/// Bootstraps a temporary two-node network, starts its map and both nodes (in this process,
/// each with its own SQLite database and TLS identity), runs the Echo flow between them, and
/// removes it all.
fn real_nodes(r: &mut Report) -> Result<()> {
    let scratch = std::env::temp_dir().join(format!("treaty-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    let outcome = crate::node::runtime()?.block_on(async {
        let began = Instant::now();
        let (map_task, nodes) = crate::bench::local_network(&scratch).await?;
        let ready = began.elapsed().as_secs_f64();
        let (alice, bob) = (&nodes[0], &nodes[1]);
        r.step(
            "network",
            format!(
                "bootstrapped a network (root CA, doorman, signed parameters), started its map and {} and {}, which found each other through it, in {:.2} s",
                alice.name, bob.name, ready
            ),
            json!({ "nodes": [alice.name.to_string(), bob.name.to_string()], "seconds": ready, "dir": scratch.display().to_string() }),
        );
        let t = Instant::now();
        let id = alice
            .flows
            .start(treaty_node::node::ECHO, json!({ "to": bob.name.to_string(), "message": "hello from Alice" }), None)
            .await?;
        let done = tokio::time::timeout(std::time::Duration::from_secs(30), alice.flows.wait(id)).await.context("the Echo flow took too long")??;
        let result: Value = serde_json::from_slice(done.result.as_deref().unwrap_or(b"null"))?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        let journal = alice.flows.journal(id).await?.len();
        if done.status != treaty_flows::FlowStatus::Completed {
            bail!("the Echo flow ended {}: {}", done.status.as_str(), done.error.unwrap_or_default());
        }
        let cash = cash_between(alice, bob).await;
        map_task.abort();
        for n in nodes {
            n.stop();
        }
        Ok::<_, anyhow::Error>((id, result, ms, journal, cash?))
    });
    let _ = std::fs::remove_dir_all(&scratch);
    let (id, result, ms, journal, cash) = outcome?;
    r.step(
        "flow",
        format!(
            "Echo flow {} ran over mutual TLS and came back {} in {ms:.0} ms; {journal} steps journaled in SQLite, so a crash at any of them resumes it",
            &id.to_string()[..8],
            result["echo"]
        ),
        json!({ "flow_id": id.to_string(), "result": result, "milliseconds": ms, "journal_entries": journal }),
    );
    r.step(
        "cash",
        format!(
            "Alice issued 1000.00 USD (CashIssue) and paid Bob 300.00 USD (CashPayment): coins selected from her vault, notarised by {}, \
             recorded by both; their vaults now hold {} and {} USD, in {:.0} ms",
            cash.notary, cash.alice, cash.bob, cash.ms
        ),
        json!({ "issue": cash.issue, "payment": cash.payment, "notary": cash.notary, "alice_usd": cash.alice, "bob_usd": cash.bob, "milliseconds": cash.ms }),
    );
    Ok(())
}

/// What the cash step of the demo did.
struct CashStep {
    issue: String,
    payment: String,
    notary: String,
    alice: String,
    bob: String,
    ms: f64,
}

/// Alice issues cash and pays Bob through the notary; returns their balances after.
async fn cash_between(alice: &treaty_node::node::RunningNode, bob: &treaty_node::node::RunningNode) -> Result<CashStep> {
    let t = Instant::now();
    let run = |flow: &'static str, args: Value| async move {
        let id = alice.flows.start(flow, args, None).await?;
        let done =
            tokio::time::timeout(std::time::Duration::from_secs(60), alice.flows.wait(id)).await.context("the flow took too long")??;
        if done.status != treaty_flows::FlowStatus::Completed {
            bail!("{flow} ended {}: {}", done.status.as_str(), done.error.unwrap_or_default());
        }
        Ok::<Value, anyhow::Error>(serde_json::from_slice(done.result.as_deref().unwrap_or(b"null"))?)
    };
    let issue = run(treaty_finance::CASH_ISSUE, json!({ "amount": "1000.00 USD" })).await?;
    let payment = run(treaty_finance::CASH_PAYMENT, json!({ "amount": "300.00 USD", "recipient": bob.name.to_string() })).await?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    let usd = |node: &treaty_node::node::RunningNode| {
        let vault = node.vault.clone();
        async move {
            let balances = vault.balances(&treaty_vault::Criteria::unconsumed()).await?;
            let cents: u128 = balances.iter().filter(|b| b.token == "USD").map(|b| b.quantity).sum();
            Ok::<String, anyhow::Error>(format!("{}.{:02}", cents / 100, cents % 100))
        }
    };
    Ok(CashStep {
        issue: issue["transaction"].as_str().unwrap_or_default().to_string(),
        payment: payment["transaction"].as_str().unwrap_or_default().to_string(),
        notary: issue["notary"].as_str().unwrap_or_default().to_string(),
        alice: usd(alice).await?,
        bob: usd(bob).await?,
        ms,
    })
}

/// What the payment chain is built from.
struct ChainSetup<'a> {
    bank: &'a Actor,
    bob: &'a Actor,
    notary: &'a Party,
    notary_key: &'a KeyPair,
    usd: &'a Issued<Currency>,
    contracts: &'a dyn ContractVerifier,
    code: &'a Attachment,
}

/// Builds a chain of `n` payments between the bank and Bob, each spending the previous output,
/// then verifies all of them in order. Returns (seconds spent verifying, transactions verified).
fn payment_chain(n: usize, setup: &ChainSetup<'_>) -> Result<(f64, usize)> {
    let ChainSetup { bank, bob, notary, notary_key, usd, contracts, code } = *setup;
    let mut ledger = MapResolver::default();
    ledger.add_attachment(code.clone());
    let amount = Amount::parse_decimal("10.00", usd.clone())?;
    let issue = TransactionBuilder::new(Some(notary.clone()))
        .output(cash_state(amount.clone(), &bank.party, notary, &code.id))
        .command(Command::new(&CashCommand::Issue, vec![bank.party.owning_key.clone()]))
        .attachment(code.id)
        .build(salt())?;
    let mut chain = vec![sign(SignedTransaction::new(issue, vec![]), &[&bank.signers[0]])];
    let holders = [bank, bob];
    for i in 0..n {
        let (from, to) = (holders[i % 2], holders[(i + 1) % 2]);
        let prev = chain.last().map(SignedTransaction::id).context("chain is never empty")?;
        let tx = TransactionBuilder::new(Some(notary.clone()))
            .input(StateRef { txhash: prev, index: 0 })
            .output(cash_state(amount.clone(), &to.party, notary, &code.id))
            .command(Command::new(&CashCommand::Move, vec![from.party.owning_key.clone()]))
            .attachment(code.id)
            .summary(format!("Move {amount}"))
            .build(salt())?;
        chain.push(sign(SignedTransaction::new(tx, vec![]), &[&from.signers[0], notary_key]));
    }
    let t = Instant::now();
    for stx in &chain {
        verify_transaction(stx, &ledger, contracts, &VerifyOptions::default())
            .with_context(|| format!("chain transaction {}", stx.id()))?;
        ledger.add_transaction(stx.tx());
    }
    Ok((t.elapsed().as_secs_f64(), chain.len()))
}
