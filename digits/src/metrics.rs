//! Distances between sets of digits and between single digits.
//!
//! * [`GaussianFit`] and [`GaussianFit::frechet_distance`]: the Fréchet distance between
//!   Gaussian fits of two sample sets (the distance behind FID), here on the 64 raw pixels. For
//!   8x8 digits the pixels themselves are meaningful features: a 64-dimensional Gaussian
//!   captures each pixel's mean ink and which pixels ink together (the strokes), and a fit
//!   needs only a few hundred samples. FID's Inception features exist because the pixels of a
//!   photograph are not; on 8x8 digits a network trained on ImageNet would see nothing it knows.
//! * [`kernel_distance`]: the squared maximum mean discrepancy with a cubic polynomial kernel,
//!   the statistic of the kernel inception distance (KID, Bińkowski et al. 2018) on pixels. Its
//!   estimate is unbiased: for two samples of one distribution it is 0 on average whatever the
//!   sample sizes, where the Fréchet distance of finite samples is biased upwards by an amount
//!   that depends on the sample size and on the samples' own spread. It complements the
//!   Fréchet distance when only a few dozen samples are affordable.
//! * [`NearestNeighbours`]: the nearest training digit in pixel space, a 1-nearest-neighbour
//!   classifier (it labels 97-99% of the held-out digits correctly) and a memorisation check
//!   (how close a sample comes to the training set).
//! * [`rmse`], [`class_counts`], [`total_variation`], [`mean_ink`].

use nalgebra::{DMatrix, DVector, SymmetricEigen};
use ndarray::{ArrayView1, ArrayView2, ArrayViewD, Zip};

use crate::data::CLASSES;
use crate::DigitsError;

/// The mean and covariance of a set of vectors (rows), in double precision.
#[derive(Debug, Clone, PartialEq)]
pub struct GaussianFit {
    mean: DVector<f64>,
    covariance: DMatrix<f64>,
    count: usize,
}

impl GaussianFit {
    /// Fits a Gaussian to the rows of `samples` (`(n, d)`): the mean and the unbiased sample
    /// covariance (divided by `n - 1`).
    ///
    /// # Errors
    ///
    /// [`DigitsError::InvalidArgument`] for fewer than two rows or no columns.
    ///
    /// ```
    /// use ddim::ndarray::array;
    /// use ddim_digits::GaussianFit;
    ///
    /// let fit = GaussianFit::of(array![[0.0f32, 1.0], [2.0, 3.0]].view())?;
    /// assert_eq!(fit.mean(), &[1.0, 2.0]);
    /// assert_eq!(fit.count(), 2);
    /// # Ok::<(), ddim_digits::DigitsError>(())
    /// ```
    pub fn of(samples: ArrayView2<'_, f32>) -> Result<Self, DigitsError> {
        let (n, d) = samples.dim();
        if n < 2 || d == 0 {
            return Err(DigitsError::InvalidArgument(format!(
                "a Gaussian fit needs at least 2 samples of at least 1 value, got {n} x {d}"
            )));
        }
        let mut mean = DVector::zeros(d);
        for row in samples.rows() {
            for (m, &v) in mean.iter_mut().zip(row) {
                *m += f64::from(v);
            }
        }
        mean /= n as f64;
        let mut covariance = DMatrix::zeros(d, d);
        let mut centred = DVector::zeros(d);
        for row in samples.rows() {
            for ((c, &v), m) in centred.iter_mut().zip(row).zip(mean.iter()) {
                *c = f64::from(v) - m;
            }
            covariance.ger(1.0, &centred, &centred, 1.0);
        }
        covariance /= (n - 1) as f64;
        Ok(GaussianFit {
            mean,
            covariance,
            count: n,
        })
    }

    /// The mean vector.
    pub fn mean(&self) -> &[f64] {
        self.mean.as_slice()
    }

    /// The number of samples fitted.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The Fréchet (2-Wasserstein) distance squared between the two Gaussians:
    /// `|m1 - m2|^2 + tr(C1) + tr(C2) - 2 tr((C1^½ C2 C1^½)^½)`, in the squared units of the
    /// samples (for images in `[0, 1]`, summed over the pixels). 0 for identical fits; the
    /// value between two finite samples of one distribution is positive and shrinks as the
    /// samples grow, so compare values computed at equal sample sizes.
    ///
    /// The matrix square roots come from symmetric eigendecompositions (nalgebra), with
    /// eigenvalues that rounding makes slightly negative taken as 0.
    ///
    /// # Errors
    ///
    /// [`DigitsError::InvalidArgument`] when the fits have different dimensions.
    ///
    /// ```
    /// use ddim::ndarray::array;
    /// use ddim_digits::GaussianFit;
    ///
    /// let a = GaussianFit::of(array![[0.0f32, 0.0], [2.0, 0.0]].view())?;
    /// let b = GaussianFit::of(array![[3.0f32, 0.0], [5.0, 0.0]].view())?;
    /// // Same covariance, means 3 apart.
    /// assert!((a.frechet_distance(&b)? - 9.0).abs() < 1e-9);
    /// assert!(a.frechet_distance(&a)?.abs() < 1e-9);
    /// # Ok::<(), ddim_digits::DigitsError>(())
    /// ```
    pub fn frechet_distance(&self, other: &GaussianFit) -> Result<f64, DigitsError> {
        if self.mean.len() != other.mean.len() {
            return Err(DigitsError::InvalidArgument(format!(
                "fits of dimension {} and {} cannot be compared",
                self.mean.len(),
                other.mean.len()
            )));
        }
        let mean_term = (&self.mean - &other.mean).norm_squared();
        let root = psd_sqrt(&self.covariance);
        let product = &root * &other.covariance * &root;
        let cross: f64 = psd_eigenvalues(product).into_iter().map(f64::sqrt).sum();
        Ok(mean_term + self.covariance.trace() + other.covariance.trace() - 2.0 * cross)
    }
}

/// The eigenvalues of a symmetric positive semi-definite matrix, negative rounding taken as 0.
fn psd_eigenvalues(matrix: DMatrix<f64>) -> Vec<f64> {
    let symmetric = (&matrix + matrix.transpose()) * 0.5;
    SymmetricEigen::new(symmetric)
        .eigenvalues
        .iter()
        .map(|&l| l.max(0.0))
        .collect()
}

/// The symmetric square root `V diag(sqrt(l)) V^T` of a symmetric positive semi-definite matrix.
fn psd_sqrt(matrix: &DMatrix<f64>) -> DMatrix<f64> {
    let symmetric = (matrix + matrix.transpose()) * 0.5;
    let eigen = SymmetricEigen::new(symmetric);
    let roots = eigen.eigenvalues.map(|l| l.max(0.0).sqrt());
    let vectors = &eigen.eigenvectors;
    vectors * DMatrix::from_diagonal(&roots) * vectors.transpose()
}

/// The unbiased estimate of the squared maximum mean discrepancy between the rows of `a` and
/// of `b` with the kernel `k(x, y) = (x . y / d + 1)^3` (`d` the row length), KID's statistic:
///
/// ```text
/// MMD^2 = sum_{i != j} k(a_i, a_j) / (m (m - 1)) + sum_{i != j} k(b_i, b_j) / (n (n - 1))
///         - 2 sum_{i, j} k(a_i, b_j) / (m n)
/// ```
///
/// 0 on average for two samples of the same distribution (so it can come out slightly
/// negative), positive when they differ. Units: the kernel's, dimensionless.
///
/// # Errors
///
/// [`DigitsError::InvalidArgument`] for fewer than two rows in either set or rows of
/// different lengths.
///
/// ```
/// use ddim::ndarray::array;
///
/// let a = array![[0.0f32, 1.0], [1.0, 0.0], [0.5, 0.5]];
/// let b = array![[0.1f32, 0.9], [0.9, 0.1], [0.4, 0.6]];
/// let far = array![[3.0f32, 3.0], [2.0, 3.0], [3.0, 2.0]];
/// let near = ddim_digits::kernel_distance(a.view(), b.view())?;
/// assert!(near < ddim_digits::kernel_distance(a.view(), far.view())?);
/// # Ok::<(), ddim_digits::DigitsError>(())
/// ```
pub fn kernel_distance(a: ArrayView2<'_, f32>, b: ArrayView2<'_, f32>) -> Result<f64, DigitsError> {
    let (m, d) = a.dim();
    let n = b.nrows();
    if m < 2 || n < 2 || d != b.ncols() || d == 0 {
        return Err(DigitsError::InvalidArgument(format!(
            "a kernel distance needs two sets of at least 2 rows of one length, got {:?} and {:?}",
            a.dim(),
            b.dim()
        )));
    }
    let a = a.mapv(f64::from);
    let b = b.mapv(f64::from);
    let kernel = |gram: ndarray::Array2<f64>| gram.mapv(|v| (v / d as f64 + 1.0).powi(3));
    let kaa = kernel(a.dot(&a.t()));
    let kbb = kernel(b.dot(&b.t()));
    let kab = kernel(a.dot(&b.t()));
    let off_diagonal = |k: &ndarray::Array2<f64>| k.sum() - k.diag().sum();
    Ok(
        off_diagonal(&kaa) / (m * (m - 1)) as f64 + off_diagonal(&kbb) / (n * (n - 1)) as f64
            - 2.0 * kab.sum() / (m * n) as f64,
    )
}

/// The nearest reference vector of a query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Neighbour {
    /// Row of the reference set.
    pub index: usize,
    /// Its label.
    pub label: u8,
    /// The root-mean-square difference per element between the query and it (Euclidean
    /// distance divided by the square root of the dimension), in the units of the values.
    pub rms_distance: f64,
}

/// A reference set of labelled vectors (the training digits) and exhaustive nearest-neighbour
/// search in Euclidean distance.
///
/// ```
/// use ddim::ndarray::array;
/// use ddim_digits::NearestNeighbours;
///
/// let reference = NearestNeighbours::new(array![[0.0f32, 0.0], [1.0, 1.0]], vec![3, 7])?;
/// let found = reference.nearest(array![0.9f32, 0.8].view());
/// assert_eq!((found.index, found.label), (1, 7));
/// # Ok::<(), ddim_digits::DigitsError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct NearestNeighbours {
    reference: ndarray::Array2<f32>,
    labels: Vec<u8>,
}

impl NearestNeighbours {
    /// A reference set: one vector per row of `reference`, one label per row.
    ///
    /// # Errors
    ///
    /// [`DigitsError::InvalidArgument`] for an empty set or a label count that differs from
    /// the row count.
    pub fn new(reference: ndarray::Array2<f32>, labels: Vec<u8>) -> Result<Self, DigitsError> {
        if reference.nrows() == 0 || reference.nrows() != labels.len() {
            return Err(DigitsError::InvalidArgument(format!(
                "{} reference vectors and {} labels",
                reference.nrows(),
                labels.len()
            )));
        }
        Ok(NearestNeighbours { reference, labels })
    }

    /// The reference vector nearest to `query` (the first one on ties).
    ///
    /// # Panics
    ///
    /// If `query` has another length than the reference vectors.
    pub fn nearest(&self, query: ArrayView1<'_, f32>) -> Neighbour {
        assert_eq!(query.len(), self.reference.ncols(), "query length");
        let mut best = (0usize, f64::INFINITY);
        for (i, row) in self.reference.rows().into_iter().enumerate() {
            let d: f64 = row
                .iter()
                .zip(query)
                .map(|(&a, &b)| {
                    let diff = f64::from(a) - f64::from(b);
                    diff * diff
                })
                .sum();
            if d < best.1 {
                best = (i, d);
            }
        }
        Neighbour {
            index: best.0,
            label: self.labels[best.0],
            rms_distance: (best.1 / query.len() as f64).sqrt(),
        }
    }

    /// [`nearest`](Self::nearest) for every row of `queries`.
    ///
    /// # Panics
    ///
    /// If the rows have another length than the reference vectors.
    pub fn nearest_all(&self, queries: ArrayView2<'_, f32>) -> Vec<Neighbour> {
        queries
            .rows()
            .into_iter()
            .map(|q| self.nearest(q))
            .collect()
    }
}

/// Root-mean-square difference over all elements of two arrays of the same shape, in double.
///
/// # Errors
///
/// [`DigitsError::InvalidArgument`] when the shapes differ or the arrays are empty.
///
/// ```
/// use ddim::ndarray::array;
///
/// let e = ddim_digits::rmse(array![0.0f32, 0.0].view().into_dyn(), array![3.0f32, 4.0].view().into_dyn())?;
/// assert!((e - 12.5f64.sqrt()).abs() < 1e-12);
/// # Ok::<(), ddim_digits::DigitsError>(())
/// ```
pub fn rmse(a: ArrayViewD<'_, f32>, b: ArrayViewD<'_, f32>) -> Result<f64, DigitsError> {
    if a.shape() != b.shape() || a.is_empty() {
        return Err(DigitsError::InvalidArgument(format!(
            "rmse of shapes {:?} and {:?}",
            a.shape(),
            b.shape()
        )));
    }
    let mut sum = 0.0f64;
    Zip::from(&a).and(&b).for_each(|&x, &y| {
        let d = f64::from(x) - f64::from(y);
        sum += d * d;
    });
    Ok((sum / a.len() as f64).sqrt())
}

/// The mean value of the rows of `images` (`(n, 64)` in `[0, 1]`): how much ink the digits
/// carry on average; a washed-out or blank sample has little.
pub fn mean_ink(images: ArrayView2<'_, f32>) -> f64 {
    images.iter().map(|&v| f64::from(v)).sum::<f64>() / images.len().max(1) as f64
}

/// How many of `labels` fall in each class `0..=9` (labels from 10 on are not counted).
pub fn class_counts(labels: impl IntoIterator<Item = u8>) -> [usize; CLASSES] {
    let mut counts = [0; CLASSES];
    for label in labels {
        if let Some(c) = counts.get_mut(usize::from(label)) {
            *c += 1;
        }
    }
    counts
}

/// Total variation distance between two class distributions given as counts:
/// `0.5 * sum |p_i - q_i|`, from 0 (same proportions) to 1 (disjoint). 0 when either is empty.
///
/// ```
/// let d = ddim_digits::total_variation(&[1, 1, 0, 0, 0, 0, 0, 0, 0, 0], &[2, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
/// assert_eq!(d, 0.5);
/// ```
pub fn total_variation(p: &[usize; CLASSES], q: &[usize; CLASSES]) -> f64 {
    let (np, nq) = (p.iter().sum::<usize>(), q.iter().sum::<usize>());
    if np == 0 || nq == 0 {
        return 0.0;
    }
    0.5 * p
        .iter()
        .zip(q)
        .map(|(&a, &b)| (a as f64 / np as f64 - b as f64 / nq as f64).abs())
        .sum::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn frechet_distance_of_scaled_isotropic_gaussians_is_known() {
        // Samples whose covariance is exactly I (2-D) and 4 I: FD = 2 * (1 + 4 - 2 * 2) = 2.
        let base = ndarray::array![[1.0f32, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]];
        let scale = (3.0f32 / 4.0).sqrt(); // var of +-1 with n - 1 = 3 is 4/3
        let a = base.mapv(|v| v * scale);
        let b = base.mapv(|v| v * scale * 2.0);
        let fd = GaussianFit::of(a.view())
            .and_then(|fa| fa.frechet_distance(&GaussianFit::of(b.view())?))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!((fd - 2.0).abs() < 1e-6, "{fd}");
    }

    #[test]
    fn frechet_distance_is_symmetric_for_correlated_fits() {
        let a = Array2::from_shape_fn((40, 3), |(i, j)| ((i * 7 + j * 3) % 11) as f32 / 11.0);
        let b = Array2::from_shape_fn((40, 3), |(i, j)| ((i * 5 + j * j) % 13) as f32 / 9.0);
        let (fa, fb) = (
            GaussianFit::of(a.view()).unwrap_or_else(|e| panic!("{e}")),
            GaussianFit::of(b.view()).unwrap_or_else(|e| panic!("{e}")),
        );
        let ab = fa.frechet_distance(&fb).unwrap_or_else(|e| panic!("{e}"));
        let ba = fb.frechet_distance(&fa).unwrap_or_else(|e| panic!("{e}"));
        assert!(ab > 0.0 && (ab - ba).abs() < 1e-9, "{ab} {ba}");
    }

    #[test]
    fn too_few_samples_are_refused() {
        assert!(GaussianFit::of(Array2::<f32>::zeros((1, 4)).view()).is_err());
    }
}
