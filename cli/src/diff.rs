//! Unified diffs of two texts, line by line (`flotilla diff`), as `diff -u`
//! prints them: hunks with three lines of context.

/// One line of an edit script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Line<'a> {
    Same(&'a str),
    Gone(&'a str),
    Added(&'a str),
}

/// The shortest edit from `a` to `b` (a longest common subsequence; these
/// texts are objects, a few hundred lines at most).
fn edits<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<Line<'a>> {
    let (n, m) = (a.len(), b.len());
    // lcs[i][j]: the longest common subsequence of a[i..] and b[j..].
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::with_capacity(n.max(m));
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            out.push(Line::Same(a[i]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            // What goes is printed before what comes in its place.
            out.push(Line::Gone(a[i]));
            i += 1;
        } else {
            out.push(Line::Added(b[j]));
            j += 1;
        }
    }
    out
}

/// `diff -u` of `old` and `new` under the names given; empty when they are
/// the same.
pub fn unified(old_name: &str, new_name: &str, old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let script = edits(&a, &b);
    if script.iter().all(|l| matches!(l, Line::Same(_))) {
        return String::new();
    }
    const CONTEXT: usize = 3;
    let mut out = format!("--- {old_name}\n+++ {new_name}\n");
    // Indexes of changed lines, grouped into hunks that share context.
    let changed: Vec<usize> = script
        .iter()
        .enumerate()
        .filter(|(_, l)| !matches!(l, Line::Same(_)))
        .map(|(i, _)| i)
        .collect();
    let mut groups: Vec<(usize, usize)> = Vec::new();
    for &c in &changed {
        let start = c.saturating_sub(CONTEXT);
        let end = (c + CONTEXT + 1).min(script.len());
        match groups.last_mut() {
            Some((_, e)) if start <= *e => *e = end,
            _ => groups.push((start, end)),
        }
    }
    for (start, end) in groups {
        // Line numbers (1-based) where the hunk starts in each text.
        let before = &script[..start];
        let old_at = before
            .iter()
            .filter(|l| !matches!(l, Line::Added(_)))
            .count();
        let new_at = before
            .iter()
            .filter(|l| !matches!(l, Line::Gone(_)))
            .count();
        let hunk = &script[start..end];
        let old_len = hunk.iter().filter(|l| !matches!(l, Line::Added(_))).count();
        let new_len = hunk.iter().filter(|l| !matches!(l, Line::Gone(_))).count();
        let at = |pos: usize, len: usize| if len == 0 { pos } else { pos + 1 };
        out.push_str(&format!(
            "@@ -{},{old_len} +{},{new_len} @@\n",
            at(old_at, old_len),
            at(new_at, new_len)
        ));
        for l in hunk {
            let (mark, text) = match l {
                Line::Same(t) => (' ', t),
                Line::Gone(t) => ('-', t),
                Line::Added(t) => ('+', t),
            };
            out.push(mark);
            out.push_str(text);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_texts_have_no_diff() {
        assert_eq!(unified("a", "b", "x\ny\n", "x\ny\n"), "");
    }

    #[test]
    fn diffs_read_as_diff_u_prints_them() {
        let old = "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n";
        let new = "1\n2\n3\n4\nfive\n6\n7\n8\n9\n10\neleven\n";
        assert_eq!(
            unified("live", "applied", old, new),
            "--- live\n+++ applied\n@@ -2,9 +2,10 @@\n 2\n 3\n 4\n-5\n+five\n 6\n 7\n 8\n 9\n 10\n+eleven\n"
        );
        // Changes far apart make hunks of their own.
        let old: String = (1..=20).map(|i| format!("{i}\n")).collect();
        let new: String = (1..=20)
            .map(|i| match i {
                2 => "two\n".to_string(),
                19 => "nineteen\n".to_string(),
                i => format!("{i}\n"),
            })
            .collect();
        let d = unified("a", "b", &old, &new);
        assert_eq!(d.matches("@@ -").count(), 2, "{d}");
        assert!(d.contains("@@ -1,5 +1,5 @@\n 1\n-2\n+two\n"), "{d}");
        // Everything new, or everything gone.
        assert_eq!(
            unified("a", "b", "", "x\n"),
            "--- a\n+++ b\n@@ -0,0 +1,1 @@\n+x\n"
        );
        assert_eq!(
            unified("a", "b", "x\n", ""),
            "--- a\n+++ b\n@@ -1,1 +0,0 @@\n-x\n"
        );
    }
}
