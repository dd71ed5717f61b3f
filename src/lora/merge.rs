//! A module's weight difference ΔW, as (out, in * kh * kw), from its factors: the formulas of A1111's
//! `extensions-builtin/Lora` (`network_lora.py`, `network_hada.py`, `network_lokr.py`, `lyco_helpers.py`), which
//! are LyCORIS' own (`lycoris/functional/{locon,loha,lokr}.py`). The scale (alpha / rank) and the user's
//! multiplier are applied by the caller.

use super::{Factor, Kind, Tensor};
use ndarray::{Array2, ArrayView2, ArrayView4, Axis};

fn view2(t: &Tensor) -> Result<ArrayView2<'_, f32>, String> {
    let (r, c) = t.rows_cols();
    ArrayView2::from_shape((r, c), &t.data).map_err(|e| format!("shape {:?}: {e}", t.shape))
}

/// Refuse factors whose shapes cannot multiply (before anything is merged).
pub fn check_shapes(kind: &Kind) -> Result<(), String> {
    let fits = |a: &Tensor, b: &Tensor, what: &str| -> Result<(), String> {
        let (_, ac) = a.rows_cols();
        let (br, _) = b.rows_cols();
        if ac != br || a.data.is_empty() || b.data.is_empty() {
            return Err(format!(
                "{what}: shapes {:?} and {:?} do not multiply",
                a.shape, b.shape
            ));
        }
        Ok(())
    };
    match kind {
        Kind::Lora { down, up, mid } => {
            if let Some(mid) = mid {
                if mid.shape.len() != 4 || mid.shape[0] != up.rows_cols().1 {
                    return Err(format!(
                        "lora_mid has shape {:?}; a Tucker core is (rank, rank, kh, kw)",
                        mid.shape
                    ));
                }
                if mid.shape[1] != down.rows_cols().0 {
                    return Err(format!(
                        "lora_mid {:?} does not fit lora_down {:?}",
                        mid.shape, down.shape
                    ));
                }
                Ok(())
            } else {
                fits(up, down, "lora_up @ lora_down")
            }
        }
        Kind::Loha { w1a, w1b, w2a, w2b } => {
            fits(w1a, w1b, "hada_w1_a @ hada_w1_b")?;
            fits(w2a, w2b, "hada_w2_a @ hada_w2_b")?;
            if (w1a.rows_cols().0, w1b.rows_cols().1) != (w2a.rows_cols().0, w2b.rows_cols().1) {
                return Err("the two Hadamard factors have different shapes".into());
            }
            Ok(())
        }
        Kind::Lokr { w1, w2 } => {
            for (f, n) in [(w1, "lokr_w1"), (w2, "lokr_w2")] {
                if let Factor::Low(a, b) = f {
                    fits(a, b, &format!("{n}_a @ {n}_b"))?;
                }
            }
            Ok(())
        }
    }
}

/// The logical (out, cols) shape ΔW has, from the factors alone (LoKr: the Kronecker product's).
pub fn delta_shape(kind: &Kind) -> (usize, usize) {
    match kind {
        Kind::Lora { down, up, mid } => match mid {
            Some(m) => (
                up.rows_cols().0,
                down.rows_cols().1 * m.shape[2] * m.shape[3],
            ),
            None => (up.rows_cols().0, down.rows_cols().1),
        },
        Kind::Loha { w1a, w1b, .. } => (w1a.rows_cols().0, w1b.rows_cols().1),
        Kind::Lokr { w1, w2 } => {
            let (a, b) = (factor_shape(w1), factor_shape(w2));
            (a.0 * b.0, a.1 * b.1)
        }
    }
}

fn factor_shape(f: &Factor) -> (usize, usize) {
    match f {
        Factor::Full(t) => t.rows_cols(),
        Factor::Low(a, b) => (a.rows_cols().0, b.rows_cols().1),
    }
}

fn factor(f: &Factor) -> Result<Array2<f32>, String> {
    match f {
        Factor::Full(t) => Ok(view2(t)?.to_owned()),
        Factor::Low(a, b) => Ok(view2(a)?.dot(&view2(b)?)),
    }
}

/// ΔW (unscaled), (out, in * kh * kw) row-major.
pub fn delta(kind: &Kind) -> Result<Array2<f32>, String> {
    match kind {
        Kind::Lora {
            down,
            up,
            mid: None,
        } => Ok(view2(up)?.dot(&view2(down)?)),
        Kind::Lora {
            down,
            up,
            mid: Some(mid),
        } => {
            // lyco_helpers.rebuild_cp_decomposition: einsum('n m k l, i n, m j -> i j k l', mid, up, down).
            let (r1, r2, kh, kw) = (mid.shape[0], mid.shape[1], mid.shape[2], mid.shape[3]);
            let mid = ArrayView4::from_shape((r1, r2, kh, kw), &mid.data)
                .map_err(|e| format!("lora_mid: {e}"))?;
            let (up, down) = (view2(up)?, view2(down)?);
            let (out, inn) = (up.nrows(), down.ncols());
            // t[n, j, k, l] = sum_m mid[n, m, k, l] down[m, j]; then ΔW[i, j, k, l] = sum_n up[i, n] t[n, j, k, l].
            let mut t = Array2::<f32>::zeros((r1, inn * kh * kw));
            for n in 0..r1 {
                for k in 0..kh {
                    for l in 0..kw {
                        for m in 0..r2 {
                            let c = mid[[n, m, k, l]];
                            if c == 0.0 {
                                continue;
                            }
                            for j in 0..inn {
                                t[[n, (j * kh + k) * kw + l]] += c * down[[m, j]];
                            }
                        }
                    }
                }
            }
            let d = up.dot(&t);
            debug_assert_eq!(d.dim(), (out, inn * kh * kw));
            Ok(d)
        }
        Kind::Loha { w1a, w1b, w2a, w2b } => {
            let a = view2(w1a)?.dot(&view2(w1b)?);
            let b = view2(w2a)?.dot(&view2(w2b)?);
            Ok(a * b)
        }
        Kind::Lokr { w1, w2 } => {
            // network_lokr.make_kron: torch.kron(w1, w2) (a 4-D w2 is flattened: the same element order).
            let (a, b) = (factor(w1)?, factor(w2)?);
            let (ar, ac) = a.dim();
            let (br, bc) = b.dim();
            let mut out = Array2::<f32>::zeros((ar * br, ac * bc));
            for ((i, j), &x) in a.indexed_iter() {
                out.slice_mut(ndarray::s![i * br..(i + 1) * br, j * bc..(j + 1) * bc])
                    .assign(&(&b * x));
            }
            Ok(out)
        }
    }
}

/// `base += w * ΔW` where the graph stores the weight as (out, cols) (`transposed` false) or as its transpose
/// (cols, out), as torch's export stores a Linear's weight for `MatMul`.
pub fn add_into(base: &mut [f32], delta: &Array2<f32>, w: f32, transposed: bool) {
    let (out, cols) = delta.dim();
    if transposed {
        for (o, row) in delta.axis_iter(Axis(0)).enumerate() {
            for (c, &d) in row.iter().enumerate() {
                base[c * out + o] += w * d;
            }
        }
    } else {
        for (b, &d) in base[..out * cols].iter_mut().zip(delta.iter()) {
            *b += w * d;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], data: &[f32]) -> Tensor {
        Tensor {
            shape: shape.to_vec(),
            data: data.to_vec(),
        }
    }

    #[test]
    fn formulas_on_small_cases() {
        // LoRA: up (2x1) @ down (1x3).
        let k = Kind::Lora {
            down: t(&[1, 3], &[1., 2., 3.]),
            up: t(&[2, 1], &[1., -1.]),
            mid: None,
        };
        assert_eq!(
            delta(&k).unwrap().into_raw_vec_and_offset().0,
            vec![1., 2., 3., -1., -2., -3.]
        );
        // LoKr: kron([[1, 2]], [[1], [10]]) = [[1, 2], [10, 20]].
        let k = Kind::Lokr {
            w1: Factor::Full(t(&[1, 2], &[1., 2.])),
            w2: Factor::Full(t(&[2, 1], &[1., 10.])),
        };
        assert_eq!(
            delta(&k).unwrap().into_raw_vec_and_offset().0,
            vec![1., 2., 10., 20.]
        );
        // LoHa: elementwise product of the two products.
        let k = Kind::Loha {
            w1a: t(&[1, 1], &[2.]),
            w1b: t(&[1, 2], &[1., 3.]),
            w2a: t(&[1, 1], &[1.]),
            w2b: t(&[1, 2], &[5., 7.]),
        };
        assert_eq!(
            delta(&k).unwrap().into_raw_vec_and_offset().0,
            vec![10., 42.]
        );
        // Transposed storage.
        let d = Array2::from_shape_vec((2, 3), vec![1., 2., 3., 4., 5., 6.]).unwrap();
        let mut base = vec![0.0; 6];
        add_into(&mut base, &d, 2.0, true);
        assert_eq!(base, vec![2., 8., 4., 10., 6., 12.]);
    }

    #[test]
    fn bad_shapes_are_refused() {
        let k = Kind::Lora {
            down: t(&[2, 3], &[0.; 6]),
            up: t(&[2, 1], &[0.; 2]),
            mid: None,
        };
        assert!(check_shapes(&k).is_err());
    }
}
