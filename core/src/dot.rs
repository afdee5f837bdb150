//! Graphviz DOT export of a graph (name scopes as nested clusters) and of a
//! compiled plan (steps coloured by device, values labelled with their
//! liveness interval and bytes).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::Arc;

use crate::graph::GraphInner;
use crate::plan::Plan;
use crate::{Device, Graph, NodeId, ValueId};

/// How much of the graph to draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DotDetail {
    /// One box per op, edges between ops.
    #[default]
    Summary,
    /// Ops and the tensors between them, each tensor with dtype and shape.
    Full,
}

/// Extra style for one node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStyle {
    /// A Graphviz colour, used as the fill (e.g. `"gold"`, `"#ffcc00"`).
    pub color: Option<String>,
    /// A Graphviz node shape (e.g. `"ellipse"`, `"octagon"`).
    pub shape: Option<String>,
    /// Nodes given the same rank are drawn on one level.
    pub rank: Option<u32>,
}

/// Options of [`Graph::to_dot`].
#[derive(Debug, Clone, Default)]
pub struct DotOptions {
    /// Summary or full.
    pub detail: DotDetail,
    /// Per-node styles.
    pub styles: HashMap<NodeId, NodeStyle>,
}

impl DotOptions {
    /// Full detail: ops and tensors.
    pub fn full() -> Self {
        DotOptions {
            detail: DotDetail::Full,
            ..Default::default()
        }
    }

    /// Adds a style for one node.
    pub fn style(mut self, node: NodeId, style: NodeStyle) -> Self {
        self.styles.insert(node, style);
        self
    }
}

/// Quotes a string for DOT.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A tree of name scopes; each holds the DOT lines of its own nodes.
#[derive(Default)]
struct ScopeTree {
    lines: Vec<String>,
    children: BTreeMap<Arc<str>, ScopeTree>,
}

impl ScopeTree {
    fn at(&mut self, path: &[Arc<str>]) -> &mut ScopeTree {
        let mut t = self;
        for p in path {
            t = t.children.entry(p.clone()).or_default();
        }
        t
    }

    /// Writes clusters with an explicit stack: scope depth is small, but
    /// nothing here recurses on user data.
    fn write(&self, out: &mut String) {
        enum Item<'a> {
            Open(&'a str, &'a ScopeTree),
            Close,
        }
        let mut next_id = 0usize;
        for line in &self.lines {
            let _ = writeln!(out, "  {line}");
        }
        let mut stack: Vec<Item<'_>> = self
            .children
            .iter()
            .rev()
            .map(|(k, v)| Item::Open(k, v))
            .collect();
        let mut depth = 1;
        while let Some(item) = stack.pop() {
            match item {
                Item::Open(name, tree) => {
                    let pad = "  ".repeat(depth);
                    let _ = writeln!(out, "{pad}subgraph cluster_{next_id} {{");
                    let _ = writeln!(
                        out,
                        "{pad}  label={}; style=rounded; color=gray40;",
                        quote(name)
                    );
                    next_id += 1;
                    depth += 1;
                    for line in &tree.lines {
                        let _ = writeln!(out, "{pad}  {line}");
                    }
                    stack.push(Item::Close);
                    stack.extend(tree.children.iter().rev().map(|(k, v)| Item::Open(k, v)));
                }
                Item::Close => {
                    depth -= 1;
                    let _ = writeln!(out, "{}}}", "  ".repeat(depth));
                }
            }
        }
    }
}

impl Graph {
    /// The graph in DOT: every node, name scopes drawn as nested clusters.
    pub fn to_dot(&self, options: &DotOptions) -> String {
        let g = self.lock();
        graph_dot(&g, options)
    }
}

fn graph_dot(g: &GraphInner, options: &DotOptions) -> String {
    let mut tree = ScopeTree::default();
    let mut edges = Vec::new();
    let mut ranks: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for index in g.dag.node_indices() {
        let Some(node) = g.dag.node_weight(index) else {
            continue;
        };
        let id = format!("n{}", index.index());
        let style = options.styles.get(&NodeId(index));
        let source = node.op.is_source();
        let mut attrs = vec![
            format!(
                "label={}",
                quote(&format!("{}\n{}", node.name, node.op.name()))
            ),
            format!(
                "shape={}",
                style
                    .and_then(|s| s.shape.clone())
                    .unwrap_or_else(|| if source { "invhouse" } else { "box" }.into())
            ),
        ];
        if let Some(color) = style.and_then(|s| s.color.as_ref()) {
            attrs.push(format!("style=filled, fillcolor={}", quote(color)));
        }
        if let Some(rank) = style.and_then(|s| s.rank) {
            ranks.entry(rank).or_default().push(id.clone());
        }
        let scope = tree.at(&node.scope);
        scope.lines.push(format!("{id} [{}];", attrs.join(", ")));
        for (slot, port) in node.inputs.iter().enumerate() {
            let src = port.node.0.index();
            match options.detail {
                DotDetail::Summary => edges.push(format!("n{src} -> {id};")),
                DotDetail::Full => edges.push(format!(
                    "t{src}_{} -> {id} [label=\"{slot}\"];",
                    port.output
                )),
            }
        }
        if options.detail == DotDetail::Full {
            for (i, ty) in node.outputs.iter().enumerate() {
                scope.lines.push(format!(
                    "t{}_{i} [label={}, shape=ellipse, fontsize=10];",
                    index.index(),
                    quote(&ty.to_string())
                ));
                edges.push(format!("{id} -> t{}_{i};", index.index()));
            }
        }
    }
    let mut out =
        String::from("digraph tensorgraph {\n  rankdir=TB;\n  node [fontname=\"Helvetica\"];\n");
    tree.write(&mut out);
    for e in edges {
        let _ = writeln!(out, "  {e}");
    }
    for ids in ranks.values() {
        let _ = writeln!(out, "  {{ rank=same; {}; }}", ids.join("; "));
    }
    out.push_str("}\n");
    out
}

/// Fill colour of a device in plan drawings.
fn device_color(device: Device) -> &'static str {
    match device {
        Device::Cpu => "lightskyblue",
        Device::Gpu => "palegreen",
        Device::Auto => "white",
    }
}

impl Plan {
    /// The plan in DOT: one node per step, coloured by its device; one
    /// edge per value use, labelled with the value's type, bytes and
    /// liveness interval (born at step i, freed after step j).
    pub fn to_dot(&self) -> String {
        let mut freed_at: Vec<Option<usize>> = vec![None; self.types.len()];
        for (i, s) in self.steps.iter().enumerate() {
            for v in &s.free_after {
                freed_at[v.0] = Some(i);
            }
        }
        let value_label = |v: ValueId| {
            let born = self.producer[v.0].map_or_else(|| "?".into(), |s| s.to_string());
            let freed = freed_at[v.0].map_or_else(|| "end (output)".into(), |s| s.to_string());
            let ty = &self.types[v.0];
            format!("{v} {ty}\n{} B, live {born}..{freed}", ty.bytes())
        };
        let mut out = String::from(
            "digraph plan {\n  rankdir=TB;\n  node [fontname=\"Helvetica\", style=filled, shape=box];\n",
        );
        for (d, backend) in self.backends.iter().enumerate() {
            let _ = writeln!(
                out,
                "  legend{d} [label={}, fillcolor={}, shape=note];",
                quote(&format!("{} ({})", backend.device(), backend.name())),
                device_color(backend.device())
            );
        }
        // A transfer is drawn as a dashed edge from the value's producer
        // on the source device to its reader, not as a node.
        let edge = |out: &mut String, v: ValueId, to: &str| {
            let Some(p) = self.producer[v.0] else { return };
            let step = &self.steps[p];
            let transfer = match (&step.kernel.op, step.outputs.iter().position(|&o| o == v)) {
                (crate::Op::Transfer { from, to }, Some(k)) => Some((*from, *to, step.inputs[k])),
                _ => None,
            };
            let line = match transfer.and_then(|(f, t, u)| Some((f, t, self.producer[u.0]?))) {
                Some((from, dst, q)) => format!(
                    "s{q} -> {to} [label={}, fontsize=9, style=dashed, color=red, fontcolor=red];",
                    quote(&format!("transfer {from} -> {dst}\n{}", value_label(v)))
                ),
                None => format!(
                    "s{p} -> {to} [label={}, fontsize=9];",
                    quote(&value_label(v))
                ),
            };
            let _ = writeln!(out, "  {line}");
        };
        for (i, s) in self.steps.iter().enumerate() {
            if matches!(s.kernel.op, crate::Op::Transfer { .. }) {
                continue;
            }
            let device = self.backends[s.device].device();
            let node = format!(
                "s{i} [label={}, fillcolor={}];",
                quote(&format!(
                    "#{i} {}\n{} on {device}",
                    s.name,
                    s.kernel.op.name()
                )),
                device_color(device)
            );
            if let crate::Op::Fused(expr) = &s.kernel.op {
                // A fused kernel is drawn as a cluster holding its program.
                let program = expr.to_string().replace("; ", "\n");
                let _ = writeln!(out, "  subgraph cluster_fused_{i} {{");
                let _ = writeln!(
                    out,
                    "    label={}; style=dashed; color=gray30; fontsize=9;",
                    quote(&format!("fused kernel\n{program}"))
                );
                let _ = writeln!(out, "    {node}\n  }}");
            } else {
                let _ = writeln!(out, "  {node}");
            }
            for &v in &s.inputs {
                edge(&mut out, v, &format!("s{i}"));
            }
        }
        for (k, &v) in self.outputs().iter().enumerate() {
            let _ = writeln!(
                out,
                "  out{k} [label={}, shape=house, fillcolor=white];",
                quote(&format!("output {k}"))
            );
            edge(&mut out, v, &format!("out{k}"));
        }
        out.push_str("}\n");
        out
    }
}
