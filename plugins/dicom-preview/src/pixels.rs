//! Decoded samples → 8-bit gray → scaled → PNG: the picture a person sees.
//!
//! Moved unchanged in behaviour from the host's `serve/preview.rs` (where
//! previews used to be rendered natively): the same VOI transformations,
//! percentile window, inversion, luma weights, triangle filter and PNG
//! settings, so previews look the same as before the move. One change in
//! how, not what: monochrome samples are mapped through the lookup table in
//! two passes over the decoded frame instead of through a copy of every
//! sample's table index, which saves two bytes per pixel of peak memory.
use dicom_pixeldata::{
    DecodedPixelData, PhotometricInterpretation, PixelRepresentation, PlanarConfiguration, VoiLutFunction,
};

use crate::{malformed, printable, RenderError};

/// An 8-bit grayscale image, row-major.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Gray {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

/// The first (only) frame of `px` as 8-bit gray.
pub(crate) fn to_gray(px: &DecodedPixelData<'_>) -> Result<Gray, RenderError> {
    let (width, height) = (px.columns(), px.rows());
    let n = width as usize * height as usize;
    let data = px.data();
    let pixels = match px.photometric_interpretation() {
        PhotometricInterpretation::Monochrome1 => monochrome(px, n, true)?,
        PhotometricInterpretation::Monochrome2 => monochrome(px, n, false)?,
        pi @ (PhotometricInterpretation::Rgb | PhotometricInterpretation::YbrFull) => {
            if px.samples_per_pixel() != 3 || px.bits_allocated() != 8 {
                return Err(RenderError::UnsupportedPixelFormat(format!(
                    "{} samples of {} bits for {pi}",
                    px.samples_per_pixel(),
                    px.bits_allocated()
                )));
            }
            if data.len() < 3 * n {
                return Err(malformed("the decoded pixel data are shorter than the image"));
            }
            let planar = px.planar_configuration() == PlanarConfiguration::PixelFirst;
            let sample = |i: usize, c: usize| f32::from(if planar { data[c * n + i] } else { data[3 * i + c] });
            if *pi == PhotometricInterpretation::YbrFull {
                // Y is the luma already.
                (0..n).map(|i| sample(i, 0) as u8).collect()
            } else {
                (0..n)
                    .map(|i| {
                        let y = 0.299 * sample(i, 0) + 0.587 * sample(i, 1) + 0.114 * sample(i, 2);
                        y.round().clamp(0.0, 255.0) as u8
                    })
                    .collect()
            }
        }
        pi => return Err(RenderError::UnsupportedPhotometricInterpretation(printable(pi.as_str(), 16))),
    };
    Ok(Gray { width, height, pixels })
}

/// Monochrome samples → rescale → window → (inversion) → 8 bits, through
/// a lookup table over every possible stored value (at most 65536).
fn monochrome(px: &DecodedPixelData<'_>, n: usize, invert: bool) -> Result<Vec<u8>, RenderError> {
    let allocated = px.bits_allocated();
    let stored = px.bits_stored().clamp(1, allocated.clamp(1, 16));
    let high_bit = px.high_bit();
    // Samples whose stored bits do not start at bit 0 (rare).
    let shift = if high_bit + 1 >= stored && high_bit < allocated { high_bit + 1 - stored } else { 0 };
    let levels = 1usize << stored;
    let mask = (levels - 1) as u32;
    let signed = px.pixel_representation() == PixelRepresentation::Signed;
    // Offset binary: flipping the sign bit maps two's complement values
    // -2^(b-1)..2^(b-1)-1 onto table indices 0..2^b-1, in order.
    let flip = if signed { (levels / 2) as u32 } else { 0 };
    let index = |raw: u32| (((raw >> shift) & mask) ^ flip) as usize;

    let data = px.data();
    let samples = match allocated {
        8 if data.len() >= n => Samples::Eight(&data[..n]),
        16 if data.len() >= 2 * n => Samples::Sixteen(&data[..2 * n]),
        8 | 16 => return Err(malformed("the decoded pixel data are shorter than the image")),
        bits => return Err(RenderError::UnsupportedPixelFormat(format!("{bits} bits allocated per sample"))),
    };

    let rescale = px
        .rescale()
        .ok()
        .and_then(|r| r.first().copied())
        .filter(|r| r.slope.is_finite() && r.intercept.is_finite() && r.slope != 0.0);
    let (slope, intercept) = rescale.map_or((1.0, 0.0), |r| (r.slope, r.intercept));
    let offset = if signed { (levels / 2) as f64 } else { 0.0 };
    let value = |i: usize| (i as f64 - offset) * slope + intercept;

    let voi = file_window(px).unwrap_or_else(|| {
        if stored > 8 {
            let mut histogram = vec![0u32; levels];
            samples.for_each(|raw| histogram[index(raw)] += 1);
            percentile_window(&histogram, n, &value)
        } else {
            Voi::Range { lo: value(0).min(value(levels - 1)), hi: value(0).max(value(levels - 1)) }
        }
    });
    let lut: Vec<u8> = (0..levels)
        .map(|i| {
            let y = voi.apply(value(i));
            let y = if invert { 1.0 - y } else { y };
            (y * 255.0).round() as u8
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    samples.for_each(|raw| out.push(lut[index(raw)]));
    Ok(out)
}

/// A decoded frame's samples, in native byte order.
enum Samples<'a> {
    Eight(&'a [u8]),
    Sixteen(&'a [u8]),
}

impl Samples<'_> {
    fn for_each(&self, mut f: impl FnMut(u32)) {
        match self {
            Samples::Eight(data) => data.iter().for_each(|&b| f(u32::from(b))),
            Samples::Sixteen(data) => data.chunks_exact(2).for_each(|b| f(u32::from(u16::from_ne_bytes([b[0], b[1]])))),
        }
    }
}

/// A VOI transformation onto 0.0..=1.0 (PS3.3 C.11.2.1.2).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Voi {
    Linear { center: f64, width: f64 },
    LinearExact { center: f64, width: f64 },
    Sigmoid { center: f64, width: f64 },
    Range { lo: f64, hi: f64 },
}

impl Voi {
    fn apply(self, x: f64) -> f64 {
        let y = match self {
            Voi::Linear { center, width } => {
                let lo = center - 0.5 - (width - 1.0) / 2.0;
                let hi = center - 0.5 + (width - 1.0) / 2.0;
                if x <= lo {
                    0.0
                } else if x > hi {
                    1.0
                } else {
                    (x - (center - 0.5)) / (width - 1.0) + 0.5
                }
            }
            Voi::LinearExact { center, width } => (x - center) / width + 0.5,
            Voi::Sigmoid { center, width } => 1.0 / (1.0 + (-4.0 * (x - center) / width).exp()),
            Voi::Range { lo, hi } => (x - lo) / (hi - lo),
        };
        y.clamp(0.0, 1.0)
    }
}

/// The file's first window, if it has a usable one.
fn file_window(px: &DecodedPixelData<'_>) -> Option<Voi> {
    let window = *px.window().ok()??.first()?;
    let (center, width) = (window.center, window.width);
    if !center.is_finite() || !width.is_finite() {
        return None;
    }
    let function = px.voi_lut_function().ok().flatten().and_then(|f| f.first().copied()).unwrap_or_default();
    match function {
        VoiLutFunction::Linear if width >= 1.0 => Some(Voi::Linear { center, width }),
        VoiLutFunction::LinearExact if width > 0.0 => Some(Voi::LinearExact { center, width }),
        VoiLutFunction::Sigmoid if width > 0.0 => Some(Voi::Sigmoid { center, width }),
        _ => None,
    }
}

/// The window from the 0.5th to the 99.5th percentile of the frame's `n`
/// samples, from their histogram over table indices.
fn percentile_window(histogram: &[u32], n: usize, value: &dyn Fn(usize) -> f64) -> Voi {
    let n = n as u64;
    let low_rank = n * 5 / 1000; // pixels allowed below the window
    let high_rank = n - n * 5 / 1000; // pixels at or below the top
    let (mut lo, mut hi, mut seen) = (None, 0, 0u64);
    for (i, &count) in histogram.iter().enumerate() {
        if count == 0 {
            continue;
        }
        seen += u64::from(count);
        if lo.is_none() && seen > low_rank {
            lo = Some(i);
        }
        hi = i;
        if seen >= high_rank.max(1) {
            break;
        }
    }
    let lo_index = lo.unwrap_or(0);
    let (a, b) = (value(lo_index), value(hi));
    let (lo, hi) = (a.min(b), a.max(b));
    if hi <= lo {
        // A flat image: mid-gray rather than a division by zero.
        Voi::Range { lo: lo - 0.5, hi: lo + 0.5 }
    } else {
        Voi::Range { lo, hi }
    }
}

/// Scales `image` down to fit `max` × `max` (never up), keeping the
/// aspect ratio (the longer side becomes `max`).
pub(crate) fn fit(image: Gray, max: u32) -> Gray {
    let (w, h) = (u64::from(image.width), u64::from(image.height));
    let longest = w.max(h);
    if longest <= u64::from(max) {
        return image;
    }
    let scaled = |side: u64| ((side * u64::from(max) + longest / 2) / longest).max(1) as u32;
    resize(&image, scaled(w), scaled(h))
}

/// For each output position along one axis: the first source index and
/// the normalised weights of a triangle filter whose radius is one output
/// pixel (so every source pixel contributes when shrinking).
fn taps(src: u32, dst: u32) -> Vec<(usize, Vec<f32>)> {
    let scale = f64::from(src) / f64::from(dst);
    let radius = scale.max(1.0);
    (0..dst)
        .map(|i| {
            let center = (f64::from(i) + 0.5) * scale;
            let start = (center - radius).floor().max(0.0) as usize;
            let end = ((center + radius).ceil() as usize).min(src as usize);
            let mut weights: Vec<f32> = (start..end)
                .map(|j| {
                    let d = ((j as f64 + 0.5) - center).abs() / radius;
                    (1.0 - d).max(0.0) as f32
                })
                .collect();
            let sum: f32 = weights.iter().sum();
            if sum > 0.0 {
                weights.iter_mut().for_each(|w| *w /= sum);
            }
            (start, weights)
        })
        .collect()
}

/// Separable triangle-filter resampling (horizontal, then vertical).
pub(crate) fn resize(image: &Gray, width: u32, height: u32) -> Gray {
    let (sw, sh) = (image.width as usize, image.height as usize);
    let (dw, dh) = (width as usize, height as usize);
    let horizontal = taps(image.width, width);
    let mut tmp = vec![0f32; sh * dw];
    for (src_row, out_row) in image.pixels.chunks_exact(sw).zip(tmp.chunks_exact_mut(dw)) {
        for (out, (start, weights)) in out_row.iter_mut().zip(&horizontal) {
            *out = weights.iter().zip(&src_row[*start..]).map(|(w, &p)| w * f32::from(p)).sum();
        }
    }
    let vertical = taps(image.height, height);
    let mut pixels = Vec::with_capacity(dw * dh);
    let mut acc = vec![0f32; dw];
    for (start, weights) in &vertical {
        acc.iter_mut().for_each(|a| *a = 0.0);
        for (k, w) in weights.iter().enumerate() {
            let row = &tmp[(start + k) * dw..(start + k + 1) * dw];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a += w * p;
            }
        }
        pixels.extend(acc.iter().map(|a| a.round().clamp(0.0, 255.0) as u8));
    }
    Gray { width, height, pixels }
}

/// Grayscale, 8 bits, fast deflate.
pub(crate) fn encode_png(image: &Gray) -> Result<Vec<u8>, RenderError> {
    let mut out = Vec::with_capacity(image.pixels.len() / 2 + 1024);
    let mut encoder = png::Encoder::new(&mut out, image.width, image.height);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    let png_error = |e: png::EncodingError| RenderError::Encode(e.to_string());
    let mut writer = encoder.write_header().map_err(png_error)?;
    writer.write_image_data(&image.pixels).map_err(png_error)?;
    writer.finish().map_err(png_error)?;
    Ok(out)
}
