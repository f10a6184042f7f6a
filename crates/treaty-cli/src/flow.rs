//! `treaty flow start | list | kill`: client RPC to a running node.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use treaty_rpc::v1 as pb;

use crate::client::{connect, rpc};
use crate::node::runtime;

fn as_json(f: &pb::Flow) -> Value {
    let parse = |s: &str| if s.is_empty() { Value::Null } else { serde_json::from_str(s).unwrap_or(Value::String(s.into())) };
    json!({
        "flow_id": f.flow_id,
        "name": f.name,
        "version": f.version,
        "status": f.status,
        "args": parse(&f.args_json),
        "result": parse(&f.result_json),
        "error": if f.error.is_empty() { Value::Null } else { Value::String(f.error.clone()) },
        "client_id": if f.client_id.is_empty() { Value::Null } else { Value::String(f.client_id.clone()) },
        "initiator": if f.initiator.is_empty() { Value::Null } else { Value::String(f.initiator.clone()) },
        "created_at_micros": f.created_at_micros,
        "updated_at_micros": f.updated_at_micros,
    })
}

/// Starts a flow; with `wait`, shows its progress and its outcome.
pub fn start(node_dir: &Path, name: &str, args: &str, wait: bool, client_id: Option<String>, json: bool) -> Result<()> {
    let parsed: Value = serde_json::from_str(args).with_context(|| format!("--args is not valid JSON: {args}"))?;
    runtime()?.block_on(async {
        let mut client = connect(node_dir).await?;
        let request = pb::StartFlowRequest { name: name.into(), args_json: parsed.to_string(), client_id: client_id.unwrap_or_default() };
        let id = client.start_flow(request).await.map_err(rpc)?.into_inner().flow_id;
        if !wait {
            if json {
                println!("{}", serde_json::to_string_pretty(&json!({ "flow_id": id, "status": "RUNNABLE" }))?);
            } else {
                println!("started flow {name} as {id}");
            }
            return Ok(());
        }
        if !json {
            println!("flow {name} {id}");
        }
        let mut events = client.watch_flow(pb::FlowRef { flow_id: id.clone() }).await.map_err(rpc)?.into_inner();
        let mut finished = None;
        let mut steps = Vec::new();
        while let Some(event) = events.message().await.map_err(rpc)? {
            match event.event {
                Some(pb::flow_event::Event::Progress(step)) => {
                    if !json {
                        println!("  ▸ {step}");
                    }
                    steps.push(step);
                }
                Some(pb::flow_event::Event::Finished(flow)) => finished = Some(flow),
                None => {}
            }
        }
        let flow = finished.context("the node closed the progress stream before the flow finished")?;
        if json {
            let mut doc = as_json(&flow);
            doc["progress"] = json!(steps);
            println!("{}", serde_json::to_string_pretty(&doc)?);
        } else if flow.status == "COMPLETED" {
            println!("{} {}", flow.status, flow.result_json);
        } else {
            println!("{}: {}", flow.status, flow.error);
        }
        if flow.status != "COMPLETED" {
            bail!("flow {id} ended {}: {}", flow.status, flow.error);
        }
        Ok(())
    })
}

/// Lists the node's flows.
pub fn list(node_dir: &Path, status: Option<String>, json: bool) -> Result<()> {
    runtime()?.block_on(async {
        let mut client = connect(node_dir).await?;
        let flows = client.list_flows(pb::ListFlowsRequest { status: status.unwrap_or_default() }).await.map_err(rpc)?.into_inner().flows;
        if json {
            println!("{}", serde_json::to_string_pretty(&json!({ "flows": flows.iter().map(as_json).collect::<Vec<_>>() }))?);
        } else if flows.is_empty() {
            println!("no flows");
        } else {
            for f in &flows {
                let detail = if f.status == "COMPLETED" { f.result_json.clone() } else { f.error.clone() };
                println!("{}  {:<12} {:<20} {}", f.flow_id, f.status, f.name, detail);
            }
        }
        Ok(())
    })
}

/// Kills a flow.
pub fn kill(node_dir: &Path, flow_id: &str, json: bool) -> Result<()> {
    runtime()?.block_on(async {
        let mut client = connect(node_dir).await?;
        let flow = client.kill_flow(pb::FlowRef { flow_id: flow_id.into() }).await.map_err(rpc)?.into_inner();
        if json {
            println!("{}", serde_json::to_string_pretty(&as_json(&flow))?);
        } else {
            println!("flow {} {}", flow.flow_id, flow.status);
        }
        Ok(())
    })
}
