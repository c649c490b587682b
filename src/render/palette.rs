//! Series colours: the colour of a device's line, derived from its id alone, so a device
//! has the same colour in every plot, on every request, and in the browser dashboard
//! (`dashboard/colors.js` holds the same table and hash; a test below reads that file and
//! checks that both agree).
//!
//! The table is Okabe and Ito's colour-blind-safe palette extended with four hues, each
//! in a shade for the light and one for the dark theme with at least 3:1 contrast against
//! that theme's background (WCAG 2 non-text contrast; 4:1 on dark). A device id picks its
//! slot by FNV-1a (32 bit) of its UTF-8 bytes modulo the table length.

use plotters::style::RGBColor;

use super::plot::Theme;

/// One palette slot: a name for people, the light-theme shade, the dark-theme shade.
pub(crate) struct Swatch {
    #[cfg_attr(not(test), allow(dead_code))] // compared with the dashboard's table
    pub name: &'static str,
    pub light: RGBColor,
    pub dark: RGBColor,
}

const fn swatch(name: &'static str, light: u32, dark: u32) -> Swatch {
    const fn rgb(c: u32) -> RGBColor {
        RGBColor((c >> 16) as u8, (c >> 8) as u8, c as u8)
    }
    Swatch {
        name,
        light: rgb(light),
        dark: rgb(dark),
    }
}

/// The palette, in slot order. Keep in step with `dashboard/colors.js`.
pub(crate) const PALETTE: [Swatch; 11] = [
    swatch("orange", 0xc28600, 0xe69f00),
    swatch("sky blue", 0x1d99e0, 0x56b4e9),
    swatch("bluish green", 0x009e73, 0x009e73),
    swatch("yellow", 0x9e940d, 0xf0e442),
    swatch("blue", 0x0072b2, 0x0081c9),
    swatch("vermillion", 0xd55e00, 0xd55e00),
    swatch("reddish purple", 0xcb77a6, 0xcc79a7),
    swatch("wine", 0x882255, 0xd0458b),
    swatch("indigo", 0x332288, 0x7e6bda),
    swatch("rose", 0xcc6677, 0xcc6677),
    swatch("brown", 0x9c6b30, 0xa47032),
];

/// FNV-1a, 32 bit, of `bytes`.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |h: u32, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The palette slot of a device id.
pub(crate) fn color_index(device: &str) -> usize {
    fnv1a(device.as_bytes()) as usize % PALETTE.len()
}

/// The colour of `device`'s line in `theme`.
pub(crate) fn series_color(device: &str, theme: Theme) -> RGBColor {
    let s = &PALETTE[color_index(device)];
    match theme {
        Theme::Light => s.light,
        Theme::Dark => s.dark,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The dashboard's copy of the palette.
    const COLORS_JS: &str = include_str!("../../dashboard/colors.js");

    fn hex(c: RGBColor) -> String {
        format!("#{:02x}{:02x}{:02x}", c.0, c.1, c.2)
    }

    /// WCAG 2 relative luminance and contrast ratio.
    fn contrast(a: RGBColor, b: RGBColor) -> f64 {
        fn lum(c: RGBColor) -> f64 {
            let ch = |v: u8| {
                let v = f64::from(v) / 255.0;
                if v <= 0.039_28 {
                    v / 12.92
                } else {
                    ((v + 0.055) / 1.055).powf(2.4)
                }
            };
            0.2126 * ch(c.0) + 0.7152 * ch(c.1) + 0.0722 * ch(c.2)
        }
        let (x, y) = (lum(a), lum(b));
        (x.max(y) + 0.05) / (x.min(y) + 0.05)
    }

    #[test]
    fn the_dashboard_has_the_same_palette() {
        let rows: Vec<(String, String, String)> = COLORS_JS
            .lines()
            .filter_map(|l| {
                let l = l.trim();
                let field = |key: &str| {
                    let rest = &l[l.find(&format!("{key}: \""))? + key.len() + 3..];
                    Some(rest[..rest.find('"')?].to_string())
                };
                Some((field("name")?, field("light")?, field("dark")?))
            })
            .collect();
        let ours: Vec<(String, String, String)> = PALETTE
            .iter()
            .map(|s| (s.name.to_string(), hex(s.light), hex(s.dark)))
            .collect();
        assert_eq!(rows, ours);
    }

    /// Ids and their slots. tests/api/browser.rs checks the same ids in the page, so the
    /// hash is the same on both sides too (UTF-8, not UTF-16, for the last one).
    const SLOTS: &[(&str, usize)] = &[
        ("climate-1", 5),
        ("door-1", 7),
        ("gps-1", 1),
        ("\u{fc}n\u{ef}code", 8),
    ];

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        assert_eq!(fnv1a(b""), 0x811c_9dc5);
        assert_eq!(fnv1a(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a(b"foobar"), 0xbf9c_f968);
        for &(id, slot) in SLOTS {
            assert_eq!(color_index(id), slot, "{id}");
        }
    }

    #[test]
    fn every_shade_has_contrast_on_its_background() {
        // The plot backgrounds and the dashboard's --chart-bg of each theme.
        let light = [RGBColor(255, 255, 255)];
        let dark = [RGBColor(24, 26, 31), RGBColor(0x16, 0x1c, 0x24)];
        for s in &PALETTE {
            for bg in light {
                assert!(contrast(s.light, bg) >= 3.0, "{} light", s.name);
            }
            for bg in dark {
                assert!(contrast(s.dark, bg) >= 4.0, "{} dark", s.name);
            }
        }
    }

    #[test]
    fn a_device_keeps_its_slot() {
        assert_eq!(color_index("climate-1"), color_index("climate-1"));
        let slots: std::collections::HashSet<usize> =
            (0..100).map(|i| color_index(&format!("dev-{i}"))).collect();
        assert_eq!(slots.len(), PALETTE.len(), "100 ids use every slot");
    }
}
