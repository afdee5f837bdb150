//! The graph: a cheap-clone handle over a petgraph `StableDiGraph` of nodes,
//! and the one place where nodes are added (with validation).

use std::collections::HashMap;
use std::panic::Location;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use petgraph::stable_graph::{NodeIndex, StableDiGraph};

use crate::op::{self, Op};
use crate::{Ctx, DType, Device, Error, Result, Shape, Tensor, TensorType, Value};

/// Identifies a node within its graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub(crate) NodeIndex);

impl NodeId {
    /// The node's index, stable for the life of the graph.
    pub fn index(self) -> usize {
        self.0.index()
    }
}

/// One output of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Port {
    /// The producing node.
    pub node: NodeId,
    /// Which of its outputs.
    pub output: usize,
}

/// A node of the graph.
#[derive(Debug, Clone)]
pub struct Node {
    /// What it computes.
    pub op: Op,
    /// Its operands, in order.
    pub inputs: Vec<Port>,
    /// The type of each output.
    pub outputs: Vec<TensorType>,
    /// Its name (unique unless the user renames two nodes alike).
    pub name: String,
    /// The name scopes it was built in, outermost first.
    pub scope: Vec<Arc<str>>,
    /// Where user code built it.
    pub location: &'static Location<'static>,
    /// The device the user pinned it to, if any.
    pub pin: Option<Device>,
    /// Whether its values are kept across runs (see [`Tensor::persist`]).
    pub persist: bool,
}

impl Node {
    /// The error context naming this node.
    pub fn ctx(&self) -> Ctx {
        Ctx {
            op: self.op.name(),
            node: self.name.clone(),
            location: self.location,
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct GraphInner {
    /// Edge weight: the consumer's operand slot.
    pub(crate) dag: StableDiGraph<Node, usize>,
    pub(crate) inputs: HashMap<String, NodeIndex>,
    pub(crate) scopes: Vec<Arc<str>>,
    pub(crate) device_scopes: Vec<Device>,
    counter: usize,
}

/// A lazily built tensor DAG. Cloning is cheap and yields a handle to the
/// same graph; it is safe to build from several threads.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    pub(crate) inner: Arc<Mutex<GraphInner>>,
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, GraphInner> {
        // Nothing panics while holding the lock, so a poisoned lock still
        // holds a consistent graph.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether two handles refer to the same graph.
    pub fn same(&self, other: &Graph) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Number of nodes built so far.
    pub fn node_count(&self) -> usize {
        self.lock().dag.node_count()
    }

    /// A copy of one node.
    pub fn node(&self, id: NodeId) -> Option<Node> {
        self.lock().dag.node_weight(id.0).cloned()
    }

    /// The names of all inputs, sorted.
    pub fn input_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lock().inputs.keys().cloned().collect();
        v.sort();
        v
    }

    /// A named placeholder, fed at run time.
    #[track_caller]
    pub fn input(&self, name: &str, dtype: DType, shape: impl Into<Shape>) -> Result<Tensor> {
        let ty = TensorType::new(dtype, shape);
        let location = Location::caller();
        let mut g = self.lock();
        if g.inputs.contains_key(name) {
            return Err(Error::DuplicateInput {
                ctx: Box::new(Ctx {
                    op: "input",
                    node: name.to_string(),
                    location,
                }),
                name: name.to_string(),
            });
        }
        let op = Op::Input {
            name: name.to_string(),
        };
        let index = g.insert(
            op,
            Vec::new(),
            vec![ty.clone()],
            Some(name.to_string()),
            location,
        );
        g.inputs.insert(name.to_string(), index);
        drop(g);
        Ok(self.tensor(index, 0, ty))
    }

    /// A constant from an ndarray array (or anything that converts to a
    /// [`Value`]).
    #[track_caller]
    pub fn constant(&self, value: impl Into<Value>) -> Tensor {
        let value = value.into();
        let ty = value.ty();
        let location = Location::caller();
        let index = self.lock().insert(
            Op::Constant(Arc::new(value)),
            Vec::new(),
            vec![ty.clone()],
            None,
            location,
        );
        self.tensor(index, 0, ty)
    }

    /// A rank-0 `f32` constant.
    #[track_caller]
    pub fn scalar(&self, x: f32) -> Tensor {
        self.constant(x)
    }

    /// Runs `build` with every node it creates inside the name scope `name`
    /// (scopes nest).
    pub fn scope<R>(&self, name: &str, build: impl FnOnce(&Graph) -> R) -> R {
        self.lock().scopes.push(Arc::from(name));
        // Pop even if `build` panics (an operator overload's documented panic).
        struct Pop<'a>(&'a Graph);
        impl Drop for Pop<'_> {
            fn drop(&mut self) {
                self.0.lock().scopes.pop();
            }
        }
        let _pop = Pop(self);
        build(self)
    }

    /// Runs `build` with every node it creates pinned to `device` (scopes
    /// nest; the innermost wins). `Device::Auto` lifts the pin.
    pub fn on_device<R>(&self, device: Device, build: impl FnOnce(&Graph) -> R) -> R {
        self.lock().device_scopes.push(device);
        struct Pop<'a>(&'a Graph);
        impl Drop for Pop<'_> {
            fn drop(&mut self) {
                self.0.lock().device_scopes.pop();
            }
        }
        let _pop = Pop(self);
        build(self)
    }

    /// A node running `func`, any Rust closure over host arrays, on the
    /// CPU. It declares its output types; a closure that returns other
    /// types, returns an error or panics fails the run with an
    /// [`Error::Backend`] naming the node.
    ///
    /// ```
    /// # use tensorgraph_core::*;
    /// let g = Graph::new();
    /// let x = g.input("x", DType::F32, [3])?;
    /// let y = g.custom("double", &[&x], vec![x.ty().clone()], |ins| {
    ///     let a = ins[0].as_f32().ok_or("expected f32")?;
    ///     Ok(vec![Value::F32(a * 2.0)])
    /// })?;
    /// # Ok::<(), Error>(())
    /// ```
    #[track_caller]
    pub fn custom<F>(
        &self,
        name: &str,
        inputs: &[&Tensor],
        outputs: Vec<TensorType>,
        func: F,
    ) -> Result<Vec<Tensor>>
    where
        F: Fn(&[&Value]) -> std::result::Result<Vec<Value>, crate::op::CustomError>
            + Send
            + Sync
            + 'static,
    {
        let op = Op::Custom(crate::op::CustomOp {
            name: Arc::from(name),
            func: Arc::new(func),
        });
        let out = self.push("custom", inputs, move |_, _| Ok((op, outputs)))?;
        if let Some(n) = out.first() {
            let mut g = self.lock();
            if let Some(node) = g.dag.node_weight_mut(n.port.node.0) {
                node.name = name.to_string();
            }
        }
        Ok(out)
    }

    /// Joins tensors along `axis` (negative counts from the end).
    #[track_caller]
    pub fn concat(&self, xs: &[&Tensor], axis: isize) -> Result<Tensor> {
        let out = self.push("concat", xs, |ctx, tys| {
            let (axis, ty) = op::infer_concat(ctx, tys, axis)?;
            Ok((Op::Concat { axis }, vec![ty]))
        })?;
        Ok(first(out))
    }

    pub(crate) fn tensor(&self, node: NodeIndex, output: usize, ty: TensorType) -> Tensor {
        Tensor {
            graph: self.clone(),
            port: Port {
                node: NodeId(node),
                output,
            },
            ty,
        }
    }

    /// Adds one node after checking its operands belong here and inferring
    /// its output types with `infer`. The only way ops enter a graph.
    #[track_caller]
    pub(crate) fn push(
        &self,
        op_name: &'static str,
        inputs: &[&Tensor],
        infer: impl FnOnce(&Ctx, &[TensorType]) -> Result<(Op, Vec<TensorType>)>,
    ) -> Result<Vec<Tensor>> {
        let location = Location::caller();
        let mut g = self.lock();
        let ctx = Ctx {
            op: op_name,
            node: format!("{op_name}_{}", g.counter),
            location,
        };
        if let Some(foreign) = inputs.iter().find(|t| !t.graph.same(self)) {
            return Err(Error::ForeignTensor {
                ctx: Box::new(ctx),
                operand: foreign.name(),
            });
        }
        let tys: Vec<TensorType> = inputs.iter().map(|t| t.ty.clone()).collect();
        let (op, outs) = infer(&ctx, &tys)?;
        let ports = inputs.iter().map(|t| t.port).collect();
        let index = g.insert(op, ports, outs.clone(), Some(ctx.node), location);
        drop(g);
        Ok(outs
            .into_iter()
            .enumerate()
            .map(|(i, ty)| self.tensor(index, i, ty))
            .collect())
    }
}

impl GraphInner {
    fn insert(
        &mut self,
        op: Op,
        inputs: Vec<Port>,
        outputs: Vec<TensorType>,
        name: Option<String>,
        location: &'static Location<'static>,
    ) -> NodeIndex {
        let name = name.unwrap_or_else(|| format!("{}_{}", op.name(), self.counter));
        self.counter += 1;
        let edges: Vec<(NodeIndex, usize)> = inputs
            .iter()
            .enumerate()
            .map(|(slot, p)| (p.node.0, slot))
            .collect();
        let index = self.dag.add_node(Node {
            op,
            inputs,
            outputs,
            name,
            scope: self.scopes.clone(),
            location,
            pin: self.device_scopes.last().copied(),
            persist: false,
        });
        for (src, slot) in edges {
            self.dag.add_edge(src, index, slot);
        }
        index
    }

    /// The node of a port; ports are only minted by this graph.
    pub(crate) fn node(&self, index: NodeIndex) -> Result<&Node> {
        self.dag
            .node_weight(index)
            .ok_or_else(|| Error::Internal(format!("node {} vanished", index.index())))
    }
}

/// The single output of a single-output op.
pub(crate) fn first(mut v: Vec<Tensor>) -> Tensor {
    // `push` returns exactly as many tensors as `infer` gave types, and
    // every single-output rule gives one.
    v.swap_remove(0)
}
