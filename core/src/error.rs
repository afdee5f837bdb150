//! The one error type of tensorgraph-core: every message names the op, the
//! node, the shapes involved and where the node was built.

use std::fmt;
use std::panic::Location;

use crate::{DType, Device, Shape, TensorType};

/// Result alias used throughout tensorgraph.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where an error happened: the op, the node's name and the source line
/// that built the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ctx {
    /// The op's name, e.g. `matmul`.
    pub op: &'static str,
    /// The node's name, e.g. `matmul_3` or a user-given name.
    pub node: String,
    /// The caller that built the node.
    pub location: &'static Location<'static>,
}

impl fmt::Display for Ctx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} `{}` (built at {}:{})",
            self.op,
            self.node,
            self.location.file(),
            self.location.line()
        )
    }
}

/// Joins shapes for messages: `[2, 3] and [4]`.
fn join_shapes(list: &[Shape]) -> String {
    list.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" and ")
}

/// Everything that can go wrong building, compiling or running a graph.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Operand shapes do not broadcast under NumPy rules.
    #[error("{ctx}: shapes {} do not broadcast", join_shapes(.shapes))]
    Broadcast {
        /// Where.
        ctx: Box<Ctx>,
        /// The operand shapes.
        shapes: Vec<Shape>,
    },
    /// Operands have different dtypes.
    #[error(
        "{ctx}: dtypes differ ({lhs} {lhs_shape} vs {rhs} {rhs_shape}); cast one operand first"
    )]
    DTypeMismatch {
        /// Where.
        ctx: Box<Ctx>,
        /// Left operand dtype.
        lhs: DType,
        /// Left operand shape.
        lhs_shape: Shape,
        /// Right operand dtype.
        rhs: DType,
        /// Right operand shape.
        rhs_shape: Shape,
    },
    /// The op is not defined for this dtype.
    #[error("{ctx}: not defined for {dtype} (input shape {shape}){hint}")]
    UnsupportedDType {
        /// Where.
        ctx: Box<Ctx>,
        /// The offending dtype.
        dtype: DType,
        /// The input's shape.
        shape: Shape,
        /// Extra advice, possibly empty.
        hint: &'static str,
    },
    /// Matmul operands have incompatible shapes.
    #[error("{ctx}: cannot multiply {lhs} by {rhs}: {reason}")]
    MatMulShape {
        /// Where.
        ctx: Box<Ctx>,
        /// Left shape.
        lhs: Shape,
        /// Right shape.
        rhs: Shape,
        /// What is wrong.
        reason: String,
    },
    /// An axis is out of range for the tensor's rank.
    #[error("{ctx}: axis {axis} is out of range for shape {shape} (rank {})", .shape.rank())]
    Axis {
        /// Where.
        ctx: Box<Ctx>,
        /// The axis as given.
        axis: isize,
        /// The tensor's shape.
        shape: Shape,
    },
    /// An axis list names one axis twice.
    #[error("{ctx}: axis {axis} appears twice for shape {shape}")]
    DuplicateAxis {
        /// Where.
        ctx: Box<Ctx>,
        /// The repeated axis, normalised.
        axis: usize,
        /// The tensor's shape.
        shape: Shape,
    },
    /// A reshape target does not fit the input.
    #[error("{ctx}: cannot reshape {from} into {to:?}: {reason}")]
    Reshape {
        /// Where.
        ctx: Box<Ctx>,
        /// Input shape.
        from: Shape,
        /// Requested dims (-1 infers one).
        to: Vec<isize>,
        /// What is wrong.
        reason: String,
    },
    /// A permutation is not a permutation of the axes.
    #[error("{ctx}: {perm:?} is not a permutation of the axes of {shape}")]
    Permutation {
        /// Where.
        ctx: Box<Ctx>,
        /// The permutation as given.
        perm: Vec<isize>,
        /// The tensor's shape.
        shape: Shape,
    },
    /// `broadcast_to` target incompatible with the input.
    #[error("{ctx}: cannot broadcast {from} to {to}")]
    BroadcastTo {
        /// Where.
        ctx: Box<Ctx>,
        /// Input shape.
        from: Shape,
        /// Target shape.
        to: Shape,
    },
    /// Bad slice bounds or step.
    #[error("{ctx}: bad slice of {shape} on axis {axis}: {reason}")]
    Slice {
        /// Where.
        ctx: Box<Ctx>,
        /// Input shape.
        shape: Shape,
        /// The axis as given.
        axis: isize,
        /// What is wrong.
        reason: String,
    },
    /// Concat inputs that do not line up.
    #[error("{ctx}: cannot concatenate {} on axis {axis}: {reason}", join_shapes(.shapes))]
    Concat {
        /// Where.
        ctx: Box<Ctx>,
        /// Input shapes.
        shapes: Vec<Shape>,
        /// The axis as given.
        axis: isize,
        /// What is wrong.
        reason: String,
    },
    /// Split sizes that do not cover the axis.
    #[error("{ctx}: cannot split {shape} on axis {axis}: {reason}")]
    Split {
        /// Where.
        ctx: Box<Ctx>,
        /// Input shape.
        shape: Shape,
        /// The axis as given.
        axis: isize,
        /// What is wrong.
        reason: String,
    },
    /// A reduction with no identity over an empty axis.
    #[error("{ctx}: {op} over an empty axis of {shape} has no value")]
    EmptyReduction {
        /// Where.
        ctx: Box<Ctx>,
        /// The reduction.
        op: &'static str,
        /// The input shape.
        shape: Shape,
    },
    /// A tensor from another graph was passed to this graph.
    #[error("{ctx}: operand `{operand}` belongs to another graph")]
    ForeignTensor {
        /// Where.
        ctx: Box<Ctx>,
        /// Name of the foreign operand.
        operand: String,
    },
    /// Two inputs with one name.
    #[error("{ctx}: an input named `{name}` already exists")]
    DuplicateInput {
        /// Where.
        ctx: Box<Ctx>,
        /// The name.
        name: String,
    },
    /// `compile` was given nothing to compute.
    #[error("compile: no outputs requested")]
    NoOutputs,
    /// `compile` was given a tensor from another graph.
    #[error("compile: output `{node}` belongs to another graph")]
    ForeignOutput {
        /// Name of the foreign output.
        node: String,
    },
    /// A plan input was not fed.
    #[error("run: input `{name}` ({expected}) was not fed")]
    MissingFeed {
        /// The input's name.
        name: String,
        /// Its declared type.
        expected: TensorType,
    },
    /// A feed names no input of the graph.
    #[error("run: feed `{name}` names no input of the graph (inputs: {known})")]
    UnknownFeed {
        /// The feed's name.
        name: String,
        /// The graph's input names.
        known: String,
    },
    /// The same input was fed twice.
    #[error("run: input `{name}` was fed twice")]
    DuplicateFeed {
        /// The input's name.
        name: String,
    },
    /// A feed's dtype or shape differs from the input's declaration.
    #[error("run: input `{name}` expects {expected}, got {found}")]
    FeedMismatch {
        /// The input's name.
        name: String,
        /// Declared type.
        expected: TensorType,
        /// Fed type.
        found: TensorType,
    },
    /// `run_into` got another number of output slots than outputs.
    #[error("run_into: {found} output slots for {expected} requested outputs")]
    OutputCount {
        /// Requested outputs.
        expected: usize,
        /// Slots given.
        found: usize,
    },
    /// A `run_into` slot's type differs from its output's.
    #[error("run_into: output {index} (node `{node}`) is {expected}, its slot holds {found}")]
    OutputMismatch {
        /// The output's position in the request.
        index: usize,
        /// The node computing it.
        node: String,
        /// The output's type.
        expected: TensorType,
        /// The slot's type.
        found: TensorType,
    },
    /// A value holds another dtype than the caller asked for.
    #[error("value holds {found}, not {expected}")]
    ValueDType {
        /// Asked for.
        expected: DType,
        /// Held.
        found: DType,
    },
    /// No backend for the requested device.
    #[error("device {device:?} is not available: {hint}")]
    DeviceUnavailable {
        /// The device asked for.
        device: Device,
        /// Why, and what to do.
        hint: String,
    },
    /// The chosen backend cannot run a node.
    #[error("{ctx}: backend `{backend}` cannot run it: {reason}")]
    Unsupported {
        /// Where.
        ctx: Box<Ctx>,
        /// The backend's name.
        backend: String,
        /// Why.
        reason: String,
    },
    /// A backend failed while running a step.
    #[error("backend `{backend}` failed at step `{node}`: {message}")]
    Backend {
        /// The backend's name.
        backend: String,
        /// The step's node name.
        node: String,
        /// What went wrong.
        message: String,
    },
    /// Writing or rendering a file failed.
    #[error("cannot write `{path}`: {message}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A broken invariant inside tensorgraph: a bug, please report it.
    #[error("internal error (a tensorgraph bug): {0}")]
    Internal(String),
}
