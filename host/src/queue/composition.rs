//! Compositions: a static DAG of capability calls whose kwargs may be bound to upstream
//! results ([`OutputRef`]), submitted as one unit (cjm-substrate's `ports`).
//!
//! Member jobs are created lazily, when their inputs exist; `fail_fast` cancels independent
//! pending members after a failure (in-flight ones finish), best-effort lets them run; the
//! transitive dependents of a failed or cancelled node are skipped either way. The terminal
//! status follows the reference's precedence ([`CompositionRun::terminal_status`]).

use std::collections::{BTreeMap, BTreeSet};

use cjm_guest::contract::JobError;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A binding marker: this kwarg's value is an upstream node's result (`field: None`) or one
/// field of it (an object key; a `/`-prefixed field is a JSON pointer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputRef {
    /// The producing node.
    #[serde(rename = "$output")]
    pub node: String,
    /// The field of its result, or the whole result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl OutputRef {
    /// The whole result of `node`.
    pub fn whole(node: impl Into<String>) -> Self {
        OutputRef {
            node: node.into(),
            field: None,
        }
    }

    /// Field `field` of the result of `node`.
    pub fn field(node: impl Into<String>, field: impl Into<String>) -> Self {
        OutputRef {
            node: node.into(),
            field: Some(field.into()),
        }
    }

    /// The bound value from `result`, or why it cannot be bound.
    pub fn extract(&self, result: &Value) -> Result<Value, String> {
        let Some(field) = &self.field else {
            return Ok(result.clone());
        };
        let found = if field.starts_with('/') {
            result.pointer(field)
        } else {
            match result {
                Value::Object(map) => map.get(field),
                _ => None,
            }
        };
        found.cloned().ok_or_else(|| {
            let shape = match result {
                Value::Object(m) => format!(
                    "an object with keys [{}]",
                    m.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
                Value::Array(_) => "an array".to_owned(),
                other => json_type(other).to_string(),
            };
            format!(
                "the result of node '{}' has no field '{field}' (it is {shape})",
                self.node
            )
        })
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// One kwarg of a node: a static value or a binding (JSON: `{"$output": "node", "field":
/// "x"}` is a binding, anything else a value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Arg {
    /// Bound at run time from an upstream result.
    Output(OutputRef),
    /// A static value.
    Value(Value),
}

/// One capability call in a composition.
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Unique within the composition.
    pub id: String,
    /// The target instance.
    pub instance_id: String,
    /// Static values and bindings (top-level values only are scanned for bindings).
    #[serde(default)]
    #[cfg_attr(feature = "server", schema(value_type = Object))]
    pub kwargs: IndexMap<String, Arg>,
    /// Priority override (0 inherits the composition's).
    #[serde(default)]
    pub priority: i64,
    /// Task-channel task (with `method`); none for `execute`.
    #[serde(default)]
    pub task: Option<String>,
    /// Task-channel method.
    #[serde(default)]
    pub method: Option<String>,
    /// Per-call control flags.
    #[serde(default)]
    #[cfg_attr(feature = "server", schema(value_type = Object))]
    pub control: Map<String, Value>,
}

impl Node {
    /// A node calling `execute` on `instance_id`.
    pub fn new(id: impl Into<String>, instance_id: impl Into<String>) -> Self {
        Node {
            id: id.into(),
            instance_id: instance_id.into(),
            kwargs: IndexMap::new(),
            priority: 0,
            task: None,
            method: None,
            control: Map::new(),
        }
    }

    /// The same node calling `task.method`.
    pub fn task(mut self, task: impl Into<String>, method: impl Into<String>) -> Self {
        self.task = Some(task.into());
        self.method = Some(method.into());
        self
    }

    /// The same node with a static kwarg.
    pub fn arg(mut self, name: impl Into<String>, value: Value) -> Self {
        self.kwargs.insert(name.into(), Arg::Value(value));
        self
    }

    /// The same node with a kwarg bound to an upstream result.
    pub fn bind(mut self, name: impl Into<String>, output: OutputRef) -> Self {
        self.kwargs.insert(name.into(), Arg::Output(output));
        self
    }

    /// The same node at `priority`.
    pub fn priority(mut self, priority: i64) -> Self {
        self.priority = priority;
        self
    }

    fn dependencies(&self) -> BTreeSet<&str> {
        self.kwargs
            .values()
            .filter_map(|a| match a {
                Arg::Output(r) => Some(r.node.as_str()),
                Arg::Value(_) => None,
            })
            .collect()
    }

    /// The kwargs with every binding resolved by `result_of` (an upstream node's result by
    /// its id): only the bound results are read, none is copied whole.
    pub fn resolve<'a>(
        &self,
        result_of: impl Fn(&str) -> Option<&'a Value>,
    ) -> Result<Map<String, Value>, String> {
        let mut out = Map::new();
        for (name, arg) in &self.kwargs {
            let value = match arg {
                Arg::Value(v) => v.clone(),
                Arg::Output(r) => {
                    let result = result_of(&r.node)
                        .ok_or_else(|| format!("node '{}' has no result to bind", r.node))?;
                    r.extract(result)
                        .map_err(|e| format!("kwarg '{name}' of node '{}': {e}", self.id))?
                }
            };
            out.insert(name.clone(), value);
        }
        Ok(out)
    }
}

/// A DAG of nodes submitted as one unit.
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Composition {
    /// The nodes (their order is the ready-scan order).
    pub nodes: Vec<Node>,
    /// Cancel independent pending members after the first failure (default).
    #[serde(default = "yes")]
    pub fail_fast: bool,
    /// Priority of members without their own.
    #[serde(default)]
    pub priority: i64,
    /// Host-tier run correlation stamped on every member job.
    #[serde(default)]
    pub run_id: Option<String>,
    /// Who asked, stamped on every member job.
    #[serde(default)]
    pub actor: Option<String>,
    /// The W3C trace context its members' jobs join (set by the host when it traces the
    /// submission; a caller may give its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

fn yes() -> bool {
    true
}

impl Composition {
    /// A fail-fast composition of `nodes`.
    pub fn new(nodes: Vec<Node>) -> Self {
        Composition {
            nodes,
            fail_fast: true,
            priority: 0,
            run_id: None,
            actor: None,
            traceparent: None,
        }
    }

    /// The same composition, best-effort (independent members continue after a failure).
    pub fn best_effort(mut self) -> Self {
        self.fail_fast = false;
        self
    }

    /// Validates the structure and returns each node's upstream nodes: every problem is
    /// listed (duplicate ids, bindings to unknown nodes, cycles).
    pub fn validate(&self) -> Result<BTreeMap<String, BTreeSet<String>>, Vec<String>> {
        let mut problems = Vec::new();
        let mut ids = BTreeSet::new();
        for n in &self.nodes {
            if !ids.insert(n.id.as_str()) {
                problems.push(format!("duplicate node id '{}'", n.id));
            }
            if n.task.is_some() != n.method.is_some() {
                problems.push(format!("node '{}': task and method go together", n.id));
            }
            for (name, arg) in &n.kwargs {
                if let Arg::Value(v) = arg
                    && let Err(e) = crate::bounds::check_depth(name, v)
                {
                    problems.push(format!("node '{}': {}", n.id, e.message));
                }
            }
        }
        let mut deps = BTreeMap::new();
        for n in &self.nodes {
            let mut up = BTreeSet::new();
            for d in n.dependencies() {
                if !ids.contains(d) {
                    problems.push(format!("node '{}' binds to unknown node '{d}'", n.id));
                } else if d == n.id {
                    problems.push(format!("node '{}' binds to itself", n.id));
                } else {
                    up.insert(d.to_owned());
                }
            }
            deps.insert(n.id.clone(), up);
        }
        if problems.is_empty()
            && let Some(cycle) = find_cycle(&deps)
        {
            problems.push(format!("dependency cycle: {}", cycle.join(" -> ")));
        }
        if problems.is_empty() {
            Ok(deps)
        } else {
            Err(problems)
        }
    }
}

fn find_cycle(deps: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    // Iterative DFS with colours; returns the first cycle found as a path.
    #[derive(Clone, Copy, PartialEq)]
    enum C {
        White,
        Grey,
        Black,
    }
    let mut colour: BTreeMap<&str, C> = deps.keys().map(|k| (k.as_str(), C::White)).collect();
    for start in deps.keys() {
        if colour[start.as_str()] != C::White {
            continue;
        }
        let mut stack: Vec<(&str, Vec<&str>)> =
            vec![(start, deps[start].iter().map(String::as_str).collect())];
        colour.insert(start, C::Grey);
        while let Some((node, pending)) = stack.last_mut() {
            let node = *node;
            match pending.pop() {
                Some(next) => match colour[next] {
                    C::White => {
                        colour.insert(next, C::Grey);
                        stack.push((next, deps[next].iter().map(String::as_str).collect()));
                    }
                    C::Grey => {
                        let mut path: Vec<String> = stack
                            .iter()
                            .map(|(n, _)| (*n).to_owned())
                            .skip_while(|n| n != next)
                            .collect();
                        path.push(next.to_owned());
                        return Some(path);
                    }
                    C::Black => {}
                },
                None => {
                    colour.insert(node, C::Black);
                    stack.pop();
                }
            }
        }
    }
    None
}

/// Where a node is (and, for the terminal subset, where a composition ended).
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Waiting for its inputs (no job yet) or its job is pending.
    Pending,
    /// Its job runs (a composition: still in flight).
    Running,
    /// Finished with a result.
    Completed,
    /// Failed (its job failed, or a binding could not be resolved).
    Failed,
    /// Cancelled.
    Cancelled,
    /// Never ran: an upstream node failed or was cancelled.
    Skipped,
}

impl NodeState {
    /// Its wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Pending => "pending",
            NodeState::Running => "running",
            NodeState::Completed => "completed",
            NodeState::Failed => "failed",
            NodeState::Cancelled => "cancelled",
            NodeState::Skipped => "skipped",
        }
    }

    /// Whether nothing more happens to the node.
    pub fn is_terminal(self) -> bool {
        !matches!(self, NodeState::Pending | NodeState::Running)
    }
}

/// The live state of one node.
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct NodeRun {
    /// Where it is.
    pub state: NodeState,
    /// Its member job, once created.
    pub job_id: Option<String>,
    /// Its result, when completed.
    #[cfg_attr(feature = "server", schema(value_type = Option<Object>))]
    pub result: Option<Value>,
    /// Why it failed or was cancelled.
    #[cfg_attr(feature = "server", schema(value_type = Option<Object>))]
    pub error: Option<JobError>,
}

/// A submitted composition.
#[cfg_attr(feature = "server", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct CompositionRun {
    /// The run id (assigned at submit).
    pub id: String,
    /// What was submitted.
    pub composition: Composition,
    /// Upstream nodes of each node.
    #[cfg_attr(feature = "server", schema(value_type = Object))]
    pub deps: BTreeMap<String, BTreeSet<String>>,
    /// Downstream nodes of each node.
    #[cfg_attr(feature = "server", schema(value_type = Object))]
    pub dependents: BTreeMap<String, BTreeSet<String>>,
    /// Per-node state.
    pub nodes: BTreeMap<String, NodeRun>,
    /// `running` until every node is terminal, then completed / failed / cancelled.
    pub status: NodeState,
    /// Whether the user cancelled the composition (distinguishes fail-fast housekeeping).
    pub cancel_requested: bool,
    /// When submitted.
    pub submitted_at: String,
    /// When it reached its terminal status.
    pub completed_at: Option<String>,
}

impl CompositionRun {
    /// A fresh run of a validated composition.
    pub fn new(
        id: String,
        composition: Composition,
        deps: BTreeMap<String, BTreeSet<String>>,
    ) -> Self {
        let mut dependents: BTreeMap<String, BTreeSet<String>> = composition
            .nodes
            .iter()
            .map(|n| (n.id.clone(), BTreeSet::new()))
            .collect();
        for (node, ups) in &deps {
            for up in ups {
                dependents
                    .entry(up.clone())
                    .or_default()
                    .insert(node.clone());
            }
        }
        let nodes = composition
            .nodes
            .iter()
            .map(|n| {
                (
                    n.id.clone(),
                    NodeRun {
                        state: NodeState::Pending,
                        job_id: None,
                        result: None,
                        error: None,
                    },
                )
            })
            .collect();
        CompositionRun {
            id,
            composition,
            deps,
            dependents,
            nodes,
            status: NodeState::Running,
            cancel_requested: false,
            submitted_at: cjm_guest::python::time::now_iso(),
            completed_at: None,
        }
    }

    /// Nodes without a job whose upstream nodes all completed, in composition order.
    pub fn ready_nodes(&self) -> Vec<String> {
        self.composition
            .nodes
            .iter()
            .filter(|n| {
                let run = &self.nodes[&n.id];
                run.state == NodeState::Pending
                    && run.job_id.is_none()
                    && self.deps[&n.id]
                        .iter()
                        .all(|d| self.nodes[d].state == NodeState::Completed)
            })
            .map(|n| n.id.clone())
            .collect()
    }

    /// Completed nodes' results by node id.
    pub fn results(&self) -> BTreeMap<String, Value> {
        self.nodes
            .iter()
            .filter_map(|(id, n)| n.result.clone().map(|r| (id.clone(), r)))
            .collect()
    }

    /// Records a node's terminal outcome (a node already terminal keeps its first one).
    pub fn record(
        &mut self,
        node: &str,
        state: NodeState,
        result: Option<Value>,
        error: Option<JobError>,
    ) {
        if let Some(n) = self.nodes.get_mut(node)
            && !n.state.is_terminal()
        {
            n.state = state;
            n.result = result;
            n.error = error;
        }
    }

    /// Marks every still-pending transitive dependent of `node` skipped; returns them.
    pub fn skip_dependents(&mut self, node: &str) -> Vec<String> {
        let mut skipped = Vec::new();
        let mut stack: Vec<String> = self.dependents[node].iter().cloned().collect();
        while let Some(d) = stack.pop() {
            let run = self.nodes.get_mut(&d);
            if let Some(run) = run
                && run.state == NodeState::Pending
                && run.job_id.is_none()
            {
                run.state = NodeState::Skipped;
                skipped.push(d.clone());
                stack.extend(self.dependents[&d].iter().cloned());
            }
        }
        skipped
    }

    /// Whether every node is terminal.
    pub fn all_terminal(&self) -> bool {
        self.nodes.values().all(|n| n.state.is_terminal())
    }

    /// The composition's terminal status, by precedence: (1) a user cancel dominates;
    /// (2) a member failure under fail-fast is `failed` (its housekeeping cancels do not
    /// make it `cancelled`); (3) a directly cancelled member is `cancelled`; (4) otherwise
    /// `completed`, including best-effort runs with failed members.
    pub fn terminal_status(&self) -> NodeState {
        let any = |s: NodeState| self.nodes.values().any(|n| n.state == s);
        if self.cancel_requested {
            NodeState::Cancelled
        } else if self.composition.fail_fast && any(NodeState::Failed) {
            NodeState::Failed
        } else if any(NodeState::Cancelled) {
            NodeState::Cancelled
        } else {
            NodeState::Completed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn chain() -> Composition {
        Composition::new(vec![
            Node::new("a", "x").arg("text", json!("t")),
            Node::new("b", "x").bind("text", OutputRef::field("a", "out")),
            Node::new("c", "x").bind("all", OutputRef::whole("b")),
            Node::new("d", "x").arg("k", json!(1)),
        ])
    }

    #[test]
    fn validation_lists_every_problem() {
        let bad = Composition::new(vec![
            Node::new("a", "x"),
            Node::new("a", "x"),
            Node::new("b", "x").bind("t", OutputRef::whole("nope")),
            Node::new("c", "x").bind("t", OutputRef::whole("c")),
        ]);
        let problems = bad.validate().unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("duplicate node id 'a'"));
        assert!(problems.iter().any(|p| p.contains("unknown node 'nope'")));
        assert!(problems.iter().any(|p| p.contains("'c' binds to itself")));

        let cyclic = Composition::new(vec![
            Node::new("a", "x").bind("t", OutputRef::whole("c")),
            Node::new("b", "x").bind("t", OutputRef::whole("a")),
            Node::new("c", "x").bind("t", OutputRef::whole("b")),
        ]);
        let problems = cyclic.validate().unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].starts_with("dependency cycle: "),
            "{problems:?}"
        );
        assert!(Composition::new(vec![]).validate().unwrap().is_empty());
    }

    #[test]
    fn ready_nodes_skips_and_bindings() {
        let comp = chain();
        let deps = comp.validate().unwrap();
        let mut run = CompositionRun::new("r".into(), comp, deps);
        assert_eq!(run.ready_nodes(), ["a", "d"]);
        run.record("a", NodeState::Completed, Some(json!({"out": 5})), None);
        assert_eq!(run.ready_nodes(), ["b", "d"]);
        let b = run.composition.nodes[1].clone();
        let results = run.results();
        assert_eq!(
            Value::Object(b.resolve(|id| results.get(id)).unwrap()),
            json!({"text": 5})
        );
        // A terminal node keeps its first outcome.
        run.record("a", NodeState::Failed, None, None);
        assert_eq!(run.nodes["a"].state, NodeState::Completed);
        let other = BTreeMap::from([("a".to_owned(), json!({"other": 5}))]);
        let err = b.resolve(|id| other.get(id)).unwrap_err();
        assert!(
            err.contains("has no field 'out'") && err.contains("[other]"),
            "{err}"
        );
        run.record("b", NodeState::Failed, None, None);
        assert_eq!(run.skip_dependents("b"), ["c"]);
        assert!(!run.all_terminal());
    }

    /// The reference's precedence list, one row per rule.
    #[test]
    fn terminal_status_precedence() {
        use NodeState::*;
        let cases: &[(&str, bool, bool, &[NodeState], NodeState)] = &[
            (
                "user cancel dominates a failure",
                true,
                true,
                &[Failed, Completed],
                Cancelled,
            ),
            (
                "user cancel dominates success",
                true,
                true,
                &[Completed, Completed],
                Cancelled,
            ),
            (
                "fail-fast failure with housekeeping cancels",
                false,
                true,
                &[Failed, Cancelled, Skipped],
                Failed,
            ),
            (
                "fail-fast failure",
                false,
                true,
                &[Failed, Completed],
                Failed,
            ),
            (
                "a directly cancelled member",
                false,
                true,
                &[Cancelled, Completed, Skipped],
                Cancelled,
            ),
            (
                "best-effort with a failed member",
                false,
                false,
                &[Failed, Completed, Skipped],
                Completed,
            ),
            (
                "best-effort with a cancelled member",
                false,
                false,
                &[Cancelled, Completed],
                Cancelled,
            ),
            (
                "all completed",
                false,
                true,
                &[Completed, Completed],
                Completed,
            ),
        ];
        for (name, cancel, fail_fast, states, want) in cases {
            let nodes: Vec<Node> = (0..states.len())
                .map(|i| Node::new(format!("n{i}"), "x"))
                .collect();
            let mut comp = Composition::new(nodes);
            comp.fail_fast = *fail_fast;
            let deps = comp.validate().unwrap();
            let mut run = CompositionRun::new("r".into(), comp, deps);
            run.cancel_requested = *cancel;
            for (i, s) in states.iter().enumerate() {
                run.record(&format!("n{i}"), *s, None, None);
            }
            assert!(run.all_terminal());
            assert_eq!(run.terminal_status(), *want, "{name}");
        }
    }

    #[test]
    fn bindings_round_trip_as_json() {
        let comp = chain();
        let text = serde_json::to_string(&comp).unwrap();
        assert!(text.contains(r#"{"$output":"a","field":"out"}"#), "{text}");
        let back: Composition = serde_json::from_str(&text).unwrap();
        assert_eq!(back, comp);
        assert_eq!(
            OutputRef::field("a", "/items/1").extract(&json!({"items": [1, 2]})),
            Ok(json!(2))
        );
    }
}
