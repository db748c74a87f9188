//! PDF to text, page by page.
//!
//! Why `pdf-extract`: it is maintained, pure Rust (no poppler or pdfium to install), and it
//! interprets fonts properly — simple encodings, `Differences`, Type 0/CID fonts and `ToUnicode`
//! CMaps — where lopdf's own `extract_text` mostly decodes raw string bytes and garbles anything
//! but plain Latin text. Its limits: text comes out in content-stream order with spacing guessed
//! from glyph positions (multi-column layouts interleave, tables lose their grid), scanned
//! pages yield nothing (no OCR), encrypted files open only when the password is empty, and on
//! odd input it can panic rather than return an error — hence `catch_unwind` below.

use std::cell::Cell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

use pdf_extract::{Document, OutputError, PlainTextOutput};

use super::{ExtractError, Extracted};

/// Separates pages in the extracted text.
const PAGE_SEPARATOR: &str = "\n\n";

pub(super) fn extract_pdf(path: &str, bytes: &[u8]) -> Result<Extracted, ExtractError> {
    let pdf_error = |reason: String| ExtractError::Pdf {
        path: path.to_owned(),
        reason,
    };
    let (pages, warnings) = quietly(|| extract_pages(bytes))
        .map_err(|panic| pdf_error(format!("the PDF parser panicked: {panic}")))?
        .map_err(pdf_error)?;

    let mut text = String::new();
    let mut ranges = Vec::with_capacity(pages.len());
    for (i, page) in pages.iter().enumerate() {
        if i > 0 {
            text.push_str(PAGE_SEPARATOR);
        }
        let start = text.len();
        text.push_str(page);
        ranges.push(start..text.len());
    }
    Ok(Extracted {
        text,
        pages: ranges,
        warnings,
    })
}

/// Per-page text (trimmed) and warnings for pages that could not be read. A page that fails
/// is kept as an empty page so that page numbers stay right.
fn extract_pages(bytes: &[u8]) -> Result<(Vec<String>, Vec<String>), String> {
    let mut doc = Document::load_mem(bytes).map_err(|e| format!("cannot parse: {e}"))?;
    if doc.is_encrypted() {
        // Many "encrypted" PDFs only restrict printing or copying and open with an empty
        // user password; anything else needs a password we do not have.
        doc.decrypt("")
            .map_err(|e| format!("encrypted and needs a password ({e})"))?;
    }
    let page_numbers: Vec<u32> = doc.get_pages().keys().copied().collect();
    if page_numbers.is_empty() {
        return Err("the document has no pages".to_owned());
    }
    let mut pages = Vec::with_capacity(page_numbers.len());
    let mut warnings = Vec::new();
    for number in page_numbers {
        match page_text(&doc, number) {
            Ok(text) => pages.push(text.trim().to_owned()),
            Err(e) => {
                warnings.push(format!("page {number}: text not extracted ({e})"));
                pages.push(String::new());
            }
        }
    }
    Ok((pages, warnings))
}

fn page_text(doc: &Document, number: u32) -> Result<String, OutputError> {
    let mut text = String::new();
    let mut output = PlainTextOutput::new(&mut text);
    pdf_extract::output_doc_page(doc, &mut output, number)?;
    Ok(text)
}

thread_local! {
    /// Set while this thread runs the PDF parser, whose panics we catch and report ourselves.
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, turning a panic into `Err(message)` without printing the panic to stderr.
///
/// The panic hook is process-wide, so it is wrapped once rather than swapped per call:
/// swapping would race with other threads and could silence their panics. The wrapper stays
/// quiet only on a thread inside this function and defers to the previous hook otherwise.
fn quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static WRAP_HOOK: Once = Once::new();
    WRAP_HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });

    let was_quiet = QUIET.with(|q| q.replace(true));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(was_quiet));
    result.map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned())
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use lopdf::content::{Content, Operation};
    use lopdf::{Document, Object, Stream, dictionary};

    use super::*;

    /// The byte range of page `page` (1-based), if it exists.
    fn page_range(pages: &[std::ops::Range<usize>], page: usize) -> Option<std::ops::Range<usize>> {
        page.checked_sub(1).and_then(|i| pages.get(i)).cloned()
    }

    /// A real PDF with one page per entry of `pages`, each line set in Helvetica with `Tj`.
    pub(crate) fn make_pdf(pages: &[&[&str]]) -> Vec<u8> {
        let mut doc = Document::with_version("1.5");
        let pages_id = doc.new_object_id();
        let font_id = doc.add_object(dictionary! {
            "Type" => "Font",
            "Subtype" => "Type1",
            "BaseFont" => "Helvetica",
            "Encoding" => "WinAnsiEncoding",
        });
        let resources_id = doc.add_object(dictionary! {
            "Font" => dictionary! { "F1" => font_id },
        });
        let mut kids = Vec::new();
        for lines in pages {
            let mut ops = vec![
                Operation::new("BT", vec![]),
                Operation::new("Tf", vec!["F1".into(), 14.into()]),
                Operation::new("TL", vec![20.into()]),
                Operation::new("Td", vec![72.into(), 720.into()]),
            ];
            for line in *lines {
                ops.push(Operation::new("Tj", vec![Object::string_literal(*line)]));
                ops.push(Operation::new("T*", vec![]));
            }
            ops.push(Operation::new("ET", vec![]));
            let content = Content { operations: ops };
            let encoded = content
                .encode()
                .expect("encoding a content stream in memory");
            let content_id = doc.add_object(Stream::new(dictionary! {}, encoded));
            let page_id = doc.add_object(dictionary! {
                "Type" => "Page",
                "Parent" => pages_id,
                "Contents" => content_id,
            });
            kids.push(page_id.into());
        }
        let count = kids.len() as i64;
        doc.objects.insert(
            pages_id,
            Object::Dictionary(dictionary! {
                "Type" => "Pages",
                "Kids" => kids,
                "Count" => count,
                "Resources" => resources_id,
                "MediaBox" => vec![0.into(), 0.into(), 612.into(), 792.into()],
            }),
        );
        let catalog_id = doc.add_object(dictionary! {
            "Type" => "Catalog",
            "Pages" => pages_id,
        });
        doc.trailer.set("Root", catalog_id);
        let mut bytes = Vec::new();
        doc.save_to(&mut bytes).expect("writing a PDF to memory");
        bytes
    }

    pub(crate) fn sample_pdf() -> Vec<u8> {
        make_pdf(&[
            &["Lore sample document", "The first page talks about apples."],
            &["Second page", "Bananas are yellow."],
        ])
    }

    #[test]
    fn two_pages_with_ranges() {
        let got = extract_pdf("sample.pdf", &sample_pdf()).expect("the sample PDF is valid");
        assert_eq!(got.pages.len(), 2);
        assert!(got.warnings.is_empty(), "{:?}", got.warnings);
        let p1 = &got.text[page_range(&got.pages, 1).expect("page 1")];
        let p2 = &got.text[page_range(&got.pages, 2).expect("page 2")];
        assert_eq!(
            p1,
            "Lore sample document\nThe first page talks about apples."
        );
        assert_eq!(p2, "Second page\nBananas are yellow.");
        assert_eq!(got.pages[0].start, 0);
        assert_eq!(got.pages[1].start, got.pages[0].end + PAGE_SEPARATOR.len());
        assert_eq!(got.pages[1].end, got.text.len());
        assert!(page_range(&got.pages, 3).is_none());
    }

    /// Regenerates the cross-crate fixture `tests/data/docs/sample.pdf`:
    /// `cargo test -p lore-ingest --lib write_sample_fixture -- --ignored`.
    #[test]
    #[ignore = "writes into the repository; run by hand to regenerate the fixture"]
    fn write_sample_fixture() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/docs/sample.pdf");
        let bytes = sample_pdf();
        std::fs::create_dir_all(path.parent().expect("the fixture path has a parent"))
            .expect("creating the fixture directory");
        std::fs::write(&path, &bytes).expect("writing the fixture");
        let got = extract_pdf("sample.pdf", &bytes).expect("the sample PDF is valid");
        assert_eq!(got.pages.len(), 2);
    }

    #[test]
    fn truncated_pdf_is_an_error() {
        let bytes = sample_pdf();
        for cut in [bytes.len() / 2, bytes.len() / 4, 20, 0] {
            let got = extract_pdf("cut.pdf", &bytes[..cut]);
            assert!(
                matches!(got, Err(ExtractError::Pdf { .. })),
                "cut at {cut}: {got:?}"
            );
        }
    }

    #[test]
    fn garbage_is_an_error() {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let garbage: Vec<u8> = (0..4096)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let got = extract_pdf("noise.pdf", &garbage);
        match got {
            Err(ExtractError::Pdf { path, reason }) => {
                assert_eq!(path, "noise.pdf");
                assert!(!reason.is_empty());
            }
            other => panic!("expected a PDF error, got {other:?}"),
        }
        let got = extract_pdf("fake.pdf", b"%PDF-1.7\nthis is not really a pdf\n%%EOF\n");
        assert!(matches!(got, Err(ExtractError::Pdf { .. })), "{got:?}");
    }

    #[test]
    fn panics_become_errors() {
        let got: Result<(), String> = quietly(|| panic!("boom {}", 42));
        assert_eq!(got, Err("boom 42".to_owned()));
        assert_eq!(quietly(|| 7), Ok(7));
    }
}
