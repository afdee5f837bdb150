//! tensorgraph-core: the typed tensor IR, shape inference, compilation into
//! plans with liveness, the executor, and the `Backend` trait that devices
//! implement. Users normally depend on the `tensorgraph` facade instead.

pub mod backend;
pub mod cost;
pub mod device;
pub mod dot;
pub mod dtype;
pub mod error;
mod exec;
pub mod fused;
pub mod graph;
pub mod liveness;
pub mod op;
pub mod passes;
mod persist;
mod placement;
pub mod plan;
pub mod schedule;
pub mod shape;
mod tensor;
pub mod timeline;
pub mod ty;
pub mod value;

pub use backend::{Backend, BufferId, Env, Kernel, Meter, Segment};
pub use device::Device;
pub use dot::{DotDetail, DotOptions, NodeStyle};
pub use dtype::DType;
pub use error::{Ctx, Error, Result};
pub use exec::RunStats;
pub use fused::{FusedExpr, Instr, Scalar};
pub use graph::{Graph, Node, NodeId, Port};
pub use liveness::MemoryPlan;
pub use op::{
    BinaryOp, CustomError, CustomFn, CustomOp, LayoutOp, Op, ReduceOp, SliceRange, SplitSpec,
    UnaryOp,
};
pub use passes::PassOptions;
pub use plan::{CompileOptions, Plan, Step, ValueId};
pub use schedule::{Task, TaskKind};
pub use shape::Shape;
pub use tensor::Tensor;
pub use timeline::{EventKind, Timeline, TimelineEvent};
pub use ty::TensorType;
pub use value::Value;
