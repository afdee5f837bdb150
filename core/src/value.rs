//! Host values: the ndarray arrays that go into and come out of a plan.

use ndarray::{ArrayD, Dimension};

use crate::{DType, Shape, TensorType};

/// An owned host array of one of the supported element types.
#[derive(Debug, PartialEq)]
pub enum Value {
    /// An `f32` array.
    F32(ArrayD<f32>),
    /// An `i32` array.
    I32(ArrayD<i32>),
}

impl Clone for Value {
    fn clone(&self) -> Self {
        match self {
            Value::F32(a) => Value::F32(a.clone()),
            Value::I32(a) => Value::I32(a.clone()),
        }
    }

    /// Reuses `self`'s storage when both hold the same dtype.
    fn clone_from(&mut self, source: &Self) {
        match (self, source) {
            (Value::F32(a), Value::F32(b)) => a.clone_from(b),
            (Value::I32(a), Value::I32(b)) => a.clone_from(b),
            (this, source) => *this = source.clone(),
        }
    }
}

impl Value {
    /// An array of zeros of type `ty`.
    pub fn zeros(ty: &TensorType) -> Value {
        let dims = ndarray::IxDyn(ty.shape.dims());
        match ty.dtype {
            DType::F32 => Value::F32(ArrayD::zeros(dims)),
            DType::I32 => Value::I32(ArrayD::zeros(dims)),
        }
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        match self {
            Value::F32(_) => DType::F32,
            Value::I32(_) => DType::I32,
        }
    }

    /// The shape.
    pub fn shape(&self) -> Shape {
        match self {
            Value::F32(a) => Shape::from(a.shape()),
            Value::I32(a) => Shape::from(a.shape()),
        }
    }

    /// Dtype and shape together.
    pub fn ty(&self) -> TensorType {
        TensorType::new(self.dtype(), self.shape())
    }

    /// Bytes of element data.
    pub fn bytes(&self) -> usize {
        self.ty().bytes()
    }

    /// The `f32` array, if this is one.
    pub fn as_f32(&self) -> Option<&ArrayD<f32>> {
        match self {
            Value::F32(a) => Some(a),
            Value::I32(_) => None,
        }
    }

    /// The `i32` array, if this is one.
    pub fn as_i32(&self) -> Option<&ArrayD<i32>> {
        match self {
            Value::I32(a) => Some(a),
            Value::F32(_) => None,
        }
    }

    /// The `f32` array; an [`crate::Error::ValueDType`] if it holds another type.
    pub fn into_f32(self) -> crate::Result<ArrayD<f32>> {
        match self {
            Value::F32(a) => Ok(a),
            other => Err(crate::Error::ValueDType {
                expected: DType::F32,
                found: other.dtype(),
            }),
        }
    }

    /// The `i32` array; an [`crate::Error::ValueDType`] if it holds another type.
    pub fn into_i32(self) -> crate::Result<ArrayD<i32>> {
        match self {
            Value::I32(a) => Ok(a),
            other => Err(crate::Error::ValueDType {
                expected: DType::I32,
                found: other.dtype(),
            }),
        }
    }
}

impl<D: Dimension> From<ndarray::Array<f32, D>> for Value {
    fn from(a: ndarray::Array<f32, D>) -> Self {
        Value::F32(a.into_dyn())
    }
}

impl<D: Dimension> From<ndarray::Array<i32, D>> for Value {
    fn from(a: ndarray::Array<i32, D>) -> Self {
        Value::I32(a.into_dyn())
    }
}

impl From<f32> for Value {
    fn from(x: f32) -> Self {
        Value::F32(ndarray::arr0(x).into_dyn())
    }
}

impl From<i32> for Value {
    fn from(x: i32) -> Self {
        Value::I32(ndarray::arr0(x).into_dyn())
    }
}
