//! The generated test picture `--send test` sends: colour bars that move one step per frame,
//! with the frame counter and the wall-clock time drawn on top, as I420 (planar Y, U, V at
//! quarter size), so a person watching the browser sees at once that video is live.

/// 75% colour bars as (Y, U, V), ITU-R BT.601: white, yellow, cyan, green, magenta, red, blue.
const BARS: [(u8, u8, u8); 7] =
    [(180, 128, 128), (162, 44, 142), (131, 156, 44), (112, 72, 58), (84, 184, 198), (65, 100, 212), (35, 212, 114)];

/// 3x5 pixel glyphs for the characters we draw; each row is 3 bits, most significant left.
fn glyph(c: char) -> Option<[u8; 5]> {
    Some(match c {
        '0' => [0b111, 0b101, 0b101, 0b101, 0b111],
        '1' => [0b010, 0b110, 0b010, 0b010, 0b111],
        '2' => [0b111, 0b001, 0b111, 0b100, 0b111],
        '3' => [0b111, 0b001, 0b111, 0b001, 0b111],
        '4' => [0b101, 0b101, 0b111, 0b001, 0b001],
        '5' => [0b111, 0b100, 0b111, 0b001, 0b111],
        '6' => [0b111, 0b100, 0b111, 0b101, 0b111],
        '7' => [0b111, 0b001, 0b001, 0b001, 0b001],
        '8' => [0b111, 0b101, 0b111, 0b101, 0b111],
        '9' => [0b111, 0b101, 0b111, 0b001, 0b111],
        ':' => [0b000, 0b010, 0b000, 0b010, 0b000],
        '.' => [0b000, 0b000, 0b000, 0b000, 0b010],
        ' ' => [0; 5],
        _ => return None,
    })
}

/// Draws test pictures of one size.
#[derive(Debug, Clone)]
pub struct TestPattern {
    width: usize,
    height: usize,
}

impl TestPattern {
    /// `width` and `height` must be even (I420 subsamples chroma by two).
    pub fn new(width: u32, height: u32) -> Self {
        Self { width: (width & !1) as usize, height: (height & !1) as usize }
    }

    pub fn frame_len(&self) -> usize {
        self.width * self.height * 3 / 2
    }

    /// Picture number `index`, with `clock` (e.g. "12:34:56.789") under the counter.
    pub fn draw(&self, index: u64, clock: &str) -> Vec<u8> {
        let (w, h) = (self.width, self.height);
        let mut img = vec![0u8; self.frame_len()];
        let bar_width = w.div_ceil(BARS.len()).max(1);
        // The bars scroll 4 pixels per frame: motion the encoder has to follow.
        let shift = (index as usize * 4) % w.max(1);
        let (y_plane, chroma) = img.split_at_mut(w * h);
        let (u_plane, v_plane) = chroma.split_at_mut(w * h / 4);
        for x in 0..w {
            let (y, u, v) = BARS[((x + shift) % w) / bar_width % BARS.len()];
            for row in 0..h {
                y_plane[row * w + x] = y;
            }
            if x % 2 == 0 {
                for row in 0..h / 2 {
                    u_plane[row * (w / 2) + x / 2] = u;
                    v_plane[row * (w / 2) + x / 2] = v;
                }
            }
        }
        let scale = (h / 40).max(1);
        let counter = format!("{index:06}");
        self.text(y_plane, &counter, scale * 2, scale * 2, scale);
        self.text(y_plane, clock, scale * 2, scale * 10, scale);
        img
    }

    /// Black box with white glyphs in the luma plane; unknown characters are skipped.
    fn text(&self, y_plane: &mut [u8], text: &str, left: usize, top: usize, scale: usize) {
        let w = self.width;
        let cell = 4 * scale;
        for (i, c) in text.chars().enumerate() {
            let Some(rows) = glyph(c) else { continue };
            for gy in 0..7 * scale {
                for gx in 0..cell {
                    let (x, y) = (left + i * cell + gx, top + gy);
                    if x >= w || y >= self.height {
                        continue;
                    }
                    // One pixel of black margin around the 3x5 glyph.
                    let (col, row) = (gx / scale, gy / scale);
                    let lit = (1..=5).contains(&row) && col < 3 && rows[row - 1] & (0b100 >> col) != 0;
                    y_plane[y * w + x] = if lit { 235 } else { 16 };
                }
            }
        }
    }
}

/// `hh:mm:ss.mmm` of the UTC time of day: the clock drawn on the picture.
pub fn clock_text(since_epoch: std::time::Duration) -> String {
    let ms = since_epoch.as_millis() % 86_400_000;
    format!("{:02}:{:02}:{:02}.{:03}", ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_has_i420_size_and_bars_move() {
        let p = TestPattern::new(320, 240);
        let a = p.draw(0, "00:00:00.000");
        let b = p.draw(1, "00:00:00.000");
        assert_eq!(a.len(), 320 * 240 * 3 / 2);
        // A row below the text: the bars moved, so the rows differ.
        let row = 200 * 320;
        assert_ne!(a[row..row + 320], b[row..row + 320]);
        // Shifted by 4 pixels.
        assert_eq!(a[row + 4..row + 320], b[row..row + 316]);
    }

    #[test]
    fn counter_is_drawn_and_changes_with_the_index() {
        let p = TestPattern::new(320, 240);
        let clock = "12:00:00.000";
        let a = p.draw(1, clock);
        let b = p.draw(2, clock);
        // The counter area (top left) differs, with bar motion removed by drawing index 1 at
        // the same shift: compare two indexes whose shift is equal (period w/4 = 80).
        let c = p.draw(81, clock);
        let top = &a[..40 * 320];
        assert!(top.contains(&235) && top.contains(&16), "white glyphs on black");
        assert_ne!(a, b);
        assert_ne!(a[..40 * 320], c[..40 * 320], "counter 000001 vs 000081");
        assert_eq!(a[200 * 320..201 * 320], c[200 * 320..201 * 320], "same bar position");
    }

    #[test]
    fn clock_text_is_time_of_day() {
        let t = std::time::Duration::from_millis(86_400_000 * 3 + 3_723_004);
        assert_eq!(clock_text(t), "01:02:03.004");
    }

    #[test]
    fn odd_sizes_are_rounded_down_to_even() {
        assert_eq!(TestPattern::new(321, 241).frame_len(), 320 * 240 * 3 / 2);
    }
}
