//! Kith IDs as QR codes: rendering to PNG, SVG and terminal text, and
//! reading an ID back from an image (a screenshot or a photo of a screen).
//!
//! The code holds the ID's link in upper case (`KITH:0…`), which fits QR's
//! compact alphanumeric mode; link parsing is case-insensitive, so scanners
//! that open links hand Kith the same ID. Error correction level M survives a
//! smudged or partly covered code.
//!
//! Reading goes through the `image` crate with limits on input size and
//! pixel count, so a hostile file cannot make the app allocate without bound,
//! and through `rqrr` for detection and decoding.

use std::io::Cursor;

use image::{GrayImage, ImageFormat, Luma};
use qrcode::render::{svg, unicode};
use qrcode::{EcLevel, QrCode};

use zeroize::Zeroizing;

use crate::id::{KithId, KithIdError};

/// Largest image file [`read_image`] accepts, in bytes.
pub const MAX_IMAGE_BYTES: usize = 32 * 1024 * 1024;
/// Largest image width or height [`read_image`] accepts, in pixels.
pub const MAX_IMAGE_SIDE: u32 = 8192;
/// Most memory the image decoder may allocate.
const MAX_DECODE_ALLOC: u64 = 256 * 1024 * 1024;

/// Why a QR code could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RenderError {
    /// The QR encoder refused the data (cannot happen for a Kith ID link).
    #[error("the QR code could not be built: {0}")]
    Encode(String),
    /// The PNG encoder failed.
    #[error("the PNG could not be written: {0}")]
    Png(String),
}

/// Why no Kith ID could be read from an image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// The file is larger than [`MAX_IMAGE_BYTES`].
    #[error("the image file is too large ({found} bytes; at most {max} are read)")]
    FileTooLarge {
        /// Bytes given.
        found: usize,
        /// The limit.
        max: usize,
    },
    /// Not an image in a format Kith reads (PNG or JPEG), or a damaged one.
    #[error("this is not a PNG or JPEG image Kith can read: {0}")]
    NotAnImage(String),
    /// The picture is wider or taller than [`MAX_IMAGE_SIDE`].
    #[error("the image is too large ({width}x{height} pixels; at most {MAX_IMAGE_SIDE} on a side)")]
    ImageTooLarge {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
    /// No QR code was found in the picture.
    #[error("no QR code was found in the image")]
    NoQrCode,
    /// A QR code was found but could not be decoded.
    #[error("a QR code was found but could not be read; try a sharper or larger image")]
    Unreadable,
    /// The QR code holds text that is not a Kith ID.
    #[error("the QR code does not hold a Kith ID: {0}")]
    NotKithId(KithIdError),
}

/// How reading a picture failed before any text in it was interpreted;
/// shared by every kind of code Kith reads from images (Kith IDs here,
/// link codes in [`crate::link`]), each mapping it into its own error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ScanFault {
    FileTooLarge { found: usize, max: usize },
    NotAnImage(String),
    ImageTooLarge { width: u32, height: u32 },
    NoQrCode,
    Unreadable,
}

impl From<ScanFault> for ReadError {
    fn from(fault: ScanFault) -> Self {
        match fault {
            ScanFault::FileTooLarge { found, max } => Self::FileTooLarge { found, max },
            ScanFault::NotAnImage(why) => Self::NotAnImage(why),
            ScanFault::ImageTooLarge { width, height } => Self::ImageTooLarge { width, height },
            ScanFault::NoQrCode => Self::NoQrCode,
            ScanFault::Unreadable => Self::Unreadable,
        }
    }
}

/// `code` as a PNG, at least `min_side` pixels wide, black on white with
/// the standard quiet zone.
pub(crate) fn png_of(code: &QrCode, min_side: u32) -> Result<Vec<u8>, RenderError> {
    let image: GrayImage = code
        .render::<Luma<u8>>()
        .min_dimensions(min_side, min_side)
        .build();
    let mut out = Cursor::new(Vec::new());
    image
        .write_to(&mut out, ImageFormat::Png)
        .map_err(|e| RenderError::Png(e.to_string()))?;
    Ok(out.into_inner())
}

/// `code` as an SVG document, at least `min_side` units wide.
pub(crate) fn svg_of(code: &QrCode, min_side: u32) -> String {
    code.render::<svg::Color<'_>>()
        .min_dimensions(min_side, min_side)
        .dark_color(svg::Color("#000000"))
        .light_color(svg::Color("#ffffff"))
        .build()
}

/// `code` as lines of Unicode half blocks for a terminal: light modules
/// are drawn, so it reads correctly on the usual dark background; the
/// quiet zone is included.
pub(crate) fn terminal_of(code: &QrCode) -> String {
    code.render::<unicode::Dense1x2>()
        .dark_color(unicode::Dense1x2::Light)
        .light_color(unicode::Dense1x2::Dark)
        .quiet_zone(true)
        .build()
}

/// Decodes a PNG or JPEG within the size, dimension and allocation
/// limits, into greyscale.
pub(crate) fn load_gray(bytes: &[u8]) -> Result<GrayImage, ScanFault> {
    if bytes.len() > MAX_IMAGE_BYTES {
        return Err(ScanFault::FileTooLarge {
            found: bytes.len(),
            max: MAX_IMAGE_BYTES,
        });
    }
    let reader = |bytes| {
        image::ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| ScanFault::NotAnImage(e.to_string()))
    };
    let probe = reader(bytes)?;
    match probe.format() {
        Some(ImageFormat::Png | ImageFormat::Jpeg) => {}
        _ => return Err(ScanFault::NotAnImage("unrecognised format".into())),
    }
    let (width, height) = probe
        .into_dimensions()
        .map_err(|e| ScanFault::NotAnImage(e.to_string()))?;
    if width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
        return Err(ScanFault::ImageTooLarge { width, height });
    }
    let mut decoder = reader(bytes)?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    decoder.limits(limits);
    Ok(decoder
        .decode()
        .map_err(|e| ScanFault::NotAnImage(e.to_string()))?
        .into_luma8())
}

/// The texts of every QR code found in `gray` that decodes (wiped when
/// dropped: a link code's text holds its secret).
pub(crate) fn scan_texts(gray: GrayImage) -> Result<Vec<Zeroizing<String>>, ScanFault> {
    // rqrr works on arbitrary pictures from outside; a panic inside it must
    // not take the application down, so it is contained and reported as an
    // unreadable code.
    let texts = std::panic::catch_unwind(move || {
        let mut prepared = rqrr::PreparedImage::prepare(gray);
        let grids = prepared.detect_grids();
        let found = !grids.is_empty();
        let texts: Vec<Zeroizing<String>> = grids
            .iter()
            .filter_map(|grid| grid.decode().ok().map(|(_, text)| Zeroizing::new(text)))
            .collect();
        (found, texts)
    });
    let (found, texts) = texts.map_err(|_| ScanFault::Unreadable)?;
    if !found {
        return Err(ScanFault::NoQrCode);
    }
    Ok(texts)
}

fn code_for(id: &KithId) -> Result<QrCode, RenderError> {
    QrCode::with_error_correction_level(id.to_uri().to_ascii_uppercase(), EcLevel::M)
        .map_err(|e| RenderError::Encode(e.to_string()))
}

/// Renders the ID's QR code as a PNG, at least `min_side` pixels wide, black
/// on white with the standard quiet zone.
pub fn to_png(id: &KithId, min_side: u32) -> Result<Vec<u8>, RenderError> {
    png_of(&code_for(id)?, min_side)
}

/// Renders the ID's QR code as an SVG document, at least `min_side` units
/// wide.
pub fn to_svg(id: &KithId, min_side: u32) -> Result<String, RenderError> {
    Ok(svg_of(&code_for(id)?, min_side))
}

/// Renders the ID's QR code as lines of Unicode half blocks for a terminal.
/// Light modules are drawn, so the code reads correctly on the usual dark
/// terminal background; the quiet zone is included.
pub fn to_terminal(id: &KithId) -> Result<String, RenderError> {
    Ok(terminal_of(&code_for(id)?))
}

/// Finds the first QR code in a PNG or JPEG image that holds a Kith ID.
pub fn read_image(bytes: &[u8]) -> Result<KithId, ReadError> {
    read_gray(load_gray(bytes)?)
}

/// Finds the first QR code in a greyscale picture that holds a Kith ID.
pub fn read_gray(gray: GrayImage) -> Result<KithId, ReadError> {
    let texts = scan_texts(gray)?;
    let mut first_error = None;
    for text in &texts {
        match KithId::parse(text) {
            Ok(id) => return Ok(id),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.map_or(ReadError::Unreadable, ReadError::NotKithId))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::Nospam;
    use crate::identity::AccountKeypair;

    fn sample() -> KithId {
        KithId::new(AccountKeypair::generate().public(), Nospam::random())
    }

    #[test]
    fn png_round_trips() {
        let id = sample();
        let png = to_png(&id, 256).unwrap();
        assert_eq!(read_image(&png), Ok(id));
    }

    #[test]
    fn qr_uses_the_compact_alphanumeric_mode() {
        // 68 characters fit a version 4 code at level M only in
        // alphanumeric mode; byte mode would need version 5.
        let code = code_for(&sample()).unwrap();
        assert_eq!(code.version(), qrcode::Version::Normal(4));
    }

    #[test]
    fn svg_and_terminal_renderings_hold_a_code() {
        let id = sample();
        let svg = to_svg(&id, 200).unwrap();
        assert!(svg.starts_with("<?xml"), "{svg}");
        assert!(svg.contains("<svg"));
        let text = to_terminal(&id).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        // 33 modules plus a quiet zone of 4 on each side, two rows a line.
        assert_eq!(lines.len(), (33 + 8usize).div_ceil(2));
        assert!(lines.iter().all(|l| l.chars().count() == 41));
    }

    #[test]
    fn pictures_without_an_id_get_their_own_errors() {
        assert!(matches!(
            read_image(b"not an image"),
            Err(ReadError::NotAnImage(_))
        ));
        let blank = GrayImage::from_pixel(64, 64, Luma([255]));
        assert_eq!(read_gray(blank), Err(ReadError::NoQrCode));
        let other = QrCode::new("https://example.org").unwrap();
        let picture: GrayImage = other.render::<Luma<u8>>().min_dimensions(200, 200).build();
        assert!(matches!(read_gray(picture), Err(ReadError::NotKithId(_))));
    }

    #[test]
    fn oversized_files_are_refused_unread() {
        let big = vec![0u8; MAX_IMAGE_BYTES + 1];
        assert!(matches!(
            read_image(&big),
            Err(ReadError::FileTooLarge { .. })
        ));
    }

    #[test]
    fn huge_dimensions_are_refused_before_decoding() {
        // A 1x1 PNG whose header claims 60000x60000 pixels.
        let mut png = Vec::new();
        let image = GrayImage::from_pixel(1, 1, Luma([0]));
        image
            .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
            .unwrap();
        // IHDR width and height sit at bytes 16..24; the header CRC then no
        // longer matches, which the decoder may report either way.
        png[16..20].copy_from_slice(&60000u32.to_be_bytes());
        png[20..24].copy_from_slice(&60000u32.to_be_bytes());
        let result = read_image(&png);
        assert!(
            matches!(
                result,
                Err(ReadError::ImageTooLarge { .. } | ReadError::NotAnImage(_))
            ),
            "{result:?}"
        );
    }
}
