//! A self-contained SVG rendering of a [`Graph`], laid out here: boxes in
//! columns by longest path along the rules (cycles broken in depth-first
//! order), ordered within a column by the mean height of their
//! predecessors, arrows as cubic curves with their ports written on them.
//! Plain SVG 1.1 with no scripts, fonts or external references, so any
//! browser opens it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{Graph, connected};
use crate::policy::{Action, EVERY};

const BOX_W: f64 = 190.0;
const TITLE_H: f64 = 28.0;
const LINE_H: f64 = 16.0;
const GAP_X: f64 = 230.0;
const GAP_Y: f64 = 36.0;
const MARGIN: f64 = 40.0;
const MAX_MEMBERS: usize = 10;
const CHAR_W: f64 = 6.6;

#[derive(Debug, Clone, Copy)]
struct Rect {
    x: f64,
    y: f64,
    h: f64,
}

impl Rect {
    fn cy(&self) -> f64 {
        self.y + self.h / 2.0
    }
    fn right(&self) -> f64 {
        self.x + BOX_W
    }
}

/// Depth-first reverse post-order: edges against it are the ones that
/// close cycles, and are ignored when ranking.
fn dfs_order(names: &[&str], succ: &BTreeMap<&str, Vec<&str>>) -> BTreeMap<String, usize> {
    fn visit<'a>(
        n: &'a str,
        succ: &BTreeMap<&str, Vec<&'a str>>,
        seen: &mut BTreeMap<&'a str, bool>,
        post: &mut Vec<&'a str>,
    ) {
        if seen.insert(n, true).is_some() {
            return;
        }
        for &m in succ.get(n).map(Vec::as_slice).unwrap_or(&[]) {
            visit(m, succ, seen, post);
        }
        post.push(n);
    }
    let mut seen = BTreeMap::new();
    let mut post = Vec::new();
    for &n in names {
        visit(n, succ, &mut seen, &mut post);
    }
    post.iter()
        .rev()
        .enumerate()
        .map(|(i, n)| (n.to_string(), i))
        .collect()
}

fn box_height(members: usize, with_inventory: bool) -> f64 {
    if !with_inventory {
        return TITLE_H + 8.0;
    }
    let lines = members.clamp(1, MAX_MEMBERS + 1);
    TITLE_H + 6.0 + lines as f64 * LINE_H
}

fn layout(g: &Graph) -> BTreeMap<String, Rect> {
    let names: Vec<&str> = g.boxes.iter().map(|b| b.name.as_str()).collect();
    let mut succ: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for e in g.edges.iter().filter(|e| e.from != e.to) {
        succ.entry(&e.from).or_default().push(&e.to);
    }
    let order = dfs_order(&names, &succ);
    let mut by_pos: Vec<&str> = names.clone();
    by_pos.sort_by_key(|n| order.get(*n).copied().unwrap_or(0));
    let mut rank: BTreeMap<&str, usize> = names.iter().map(|n| (*n, 0)).collect();
    for &u in &by_pos {
        let ru = rank[u];
        for &v in succ.get(u).map(Vec::as_slice).unwrap_or(&[]) {
            if order.get(v) > order.get(u) && rank[v] < ru + 1 {
                rank.insert(v, ru + 1);
            }
        }
    }
    // Boxes no rule touches go in a last column of their own.
    let linked = connected(g);
    let max_rank = rank.values().copied().max().unwrap_or(0);
    let loose_rank = if linked.is_empty() { 0 } else { max_rank + 1 };
    for n in &names {
        if !linked.contains(n) {
            rank.insert(n, loose_rank);
        }
    }
    let mut columns: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    for n in &names {
        columns.entry(rank[n]).or_default().push(n);
    }
    let heights: BTreeMap<&str, f64> = g
        .boxes
        .iter()
        .map(|b| {
            let lines = if b.name == EVERY { 1 } else { b.members.len() };
            (b.name.as_str(), box_height(lines, g.with_inventory))
        })
        .collect();
    let mut out: BTreeMap<String, Rect> = BTreeMap::new();
    for (col, mut members) in columns {
        let key = |n: &str, out: &BTreeMap<String, Rect>| -> f64 {
            let ys: Vec<f64> = g
                .edges
                .iter()
                .filter(|e| e.to == n)
                .filter_map(|e| out.get(&e.from).map(Rect::cy))
                .collect();
            if ys.is_empty() {
                f64::MAX
            } else {
                ys.iter().sum::<f64>() / ys.len() as f64
            }
        };
        members.sort_by(|a, b| key(a, &out).total_cmp(&key(b, &out)).then(a.cmp(b)));
        let mut y = MARGIN + 30.0;
        for n in members {
            let h = heights[n];
            let x = MARGIN + col as f64 * (BOX_W + GAP_X);
            out.insert(n.to_string(), Rect { x, y, h });
            y += h + GAP_Y;
        }
    }
    out
}

/// XML text escaping.
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => o.push(' '),
            c => o.push(c),
        }
    }
    o
}

fn label(s: &mut String, x: f64, y: f64, text: &str, color: &str) {
    let w = text.chars().count() as f64 * CHAR_W + 8.0;
    let _ = writeln!(
        s,
        r##"<rect x="{:.1}" y="{:.1}" width="{w:.1}" height="16" rx="3" fill="#ffffff" fill-opacity="0.9"/>"##,
        x - w / 2.0,
        y - 11.0
    );
    let _ = writeln!(
        s,
        r#"<text x="{x:.1}" y="{y:.1}" text-anchor="middle" fill="{color}">{}</text>"#,
        esc(text)
    );
}

/// Renders the graph; `title` is shown at the top (e.g. the policy path).
pub fn to_svg(g: &Graph, title: &str) -> String {
    let rects = layout(g);
    let mut body = String::new();
    // Arrows first, so boxes sit on top of their ends.
    let mut seen_pairs: BTreeMap<(String, String), usize> = BTreeMap::new();
    let lanes_below = rects.values().map(|r| r.y + r.h).fold(0.0, f64::max);
    let mut lane_count = 0usize;
    for e in &g.edges {
        let (Some(a), Some(b)) = (rects.get(&e.from), rects.get(&e.to)) else {
            continue;
        };
        let nth = seen_pairs
            .entry((e.from.clone(), e.to.clone()))
            .or_default();
        let off = *nth as f64 * 14.0;
        *nth += 1;
        let (color, dash, marker, prefix) = match e.action {
            Action::Allow => ("#1f2937", "", "arrow", ""),
            Action::Deny => (
                "#dc2626",
                r#" stroke-dasharray="6 4""#,
                "arrow-deny",
                "deny ",
            ),
        };
        let (path, mid) = if e.from == e.to {
            let (x0, y0) = (a.right() - 50.0 - off, a.y);
            let (x1, y1) = (a.right(), a.y + 16.0 + off);
            let p = format!(
                "M {x0:.1} {y0:.1} C {x0:.1} {:.1}, {:.1} {y1:.1}, {x1:.1} {y1:.1}",
                y0 - 45.0,
                x1 + 45.0
            );
            (p, (x1 + 10.0, y0 - 22.0))
        } else if b.x > a.x && b.x - a.right() < GAP_X + 1.0 {
            // Neighbouring columns: one S-curve.
            let (x0, y0) = (a.right(), a.cy() + off);
            let (x1, y1) = (b.x, b.cy() + off);
            let dx = (x1 - x0) / 2.0;
            let p = format!(
                "M {x0:.1} {y0:.1} C {:.1} {y0:.1}, {:.1} {y1:.1}, {x1:.1} {y1:.1}",
                x0 + dx,
                x1 - dx
            );
            (p, ((x0 + x1) / 2.0, (y0 + y1) / 2.0))
        } else if b.x > a.x {
            // Skips columns: run along a lane below every box in between,
            // so the arrow never crosses a box.
            let (x0, y0) = (a.right(), a.cy() + off);
            let (x1, y1) = (b.x, b.cy() + off);
            let lane = lanes_below + 24.0 + lane_count as f64 * 22.0;
            lane_count += 1;
            let p = format!(
                "M {x0:.1} {y0:.1} C {:.1} {y0:.1}, {:.1} {lane:.1}, {:.1} {lane:.1} L {:.1} {lane:.1} C {:.1} {lane:.1}, {:.1} {y1:.1}, {x1:.1} {y1:.1}",
                x0 + 70.0,
                x0 + 40.0,
                x0 + 110.0,
                x1 - 110.0,
                x1 - 40.0,
                x1 - 70.0
            );
            (p, ((x0 + x1) / 2.0, lane + 4.0))
        } else {
            // Same column or backwards: loop out to the right of both.
            let (x0, y0) = (a.right(), a.cy() + off);
            let (x1, y1) = (b.right(), b.cy() + off);
            let bulge = x0.max(x1) + 70.0 + off * 2.0;
            let p = format!(
                "M {x0:.1} {y0:.1} C {bulge:.1} {y0:.1}, {bulge:.1} {y1:.1}, {x1:.1} {y1:.1}"
            );
            // The label sits just right of the curve's outermost point,
            // clear of the boxes it loops around.
            let mx = (x0 + 3.0 * bulge + 3.0 * bulge + x1) / 8.0;
            let w = (prefix.len() + e.ports.to_string().len()) as f64 * CHAR_W + 8.0;
            (p, (mx + w / 2.0 + 6.0, (y0 + y1) / 2.0))
        };
        let tip = format!(
            "{} -> {}: {}{} ({})",
            e.from,
            e.to,
            prefix,
            e.ports,
            e.rules.join(", ")
        );
        let _ = writeln!(
            body,
            r#"<path d="{path}" fill="none" stroke="{color}" stroke-width="1.6"{dash} marker-end="url(#{marker})"><title>{}</title></path>"#,
            esc(&tip)
        );
        label(
            &mut body,
            mid.0,
            mid.1,
            &format!("{prefix}{}", e.ports),
            color,
        );
    }
    for b in &g.boxes {
        let Some(r) = rects.get(&b.name) else {
            continue;
        };
        let every = b.name == EVERY;
        let fill = if every { "#fef3c7" } else { "#e0f2fe" };
        let _ = writeln!(
            body,
            r##"<rect x="{:.1}" y="{:.1}" width="{BOX_W}" height="{:.1}" rx="8" fill="{fill}" stroke="#0369a1" stroke-width="1.4"/>"##,
            r.x, r.y, r.h
        );
        let name = if every {
            "* (every node)"
        } else {
            b.name.as_str()
        };
        let _ = writeln!(
            body,
            r#"<text x="{:.1}" y="{:.1}" font-weight="bold" text-anchor="middle">{}</text>"#,
            r.x + BOX_W / 2.0,
            r.y + 19.0,
            esc(name)
        );
        if g.with_inventory && every {
            let _ = writeln!(
                body,
                r##"<text x="{:.1}" y="{:.1}" fill="#334155">all {} nodes</text>"##,
                r.x + 12.0,
                r.y + TITLE_H + 14.0,
                b.members.len()
            );
        } else if g.with_inventory {
            let mut lines: Vec<String> = b
                .members
                .iter()
                .take(MAX_MEMBERS)
                .map(ToString::to_string)
                .collect();
            if b.members.len() > MAX_MEMBERS {
                lines.push(format!("... and {} more", b.members.len() - MAX_MEMBERS));
            }
            if lines.is_empty() {
                lines.push("(no nodes)".to_string());
            }
            for (i, l) in lines.iter().enumerate() {
                let _ = writeln!(
                    body,
                    r##"<text x="{:.1}" y="{:.1}" fill="#334155">{}</text>"##,
                    r.x + 12.0,
                    r.y + TITLE_H + 14.0 + i as f64 * LINE_H,
                    esc(l)
                );
            }
        }
    }
    let mut width = rects
        .values()
        .map(|r| r.right() + 160.0)
        .fold(400.0, f64::max);
    let mut height = lanes_below.max(100.0)
        + MARGIN
        + if lane_count > 0 {
            30.0 + lane_count as f64 * 22.0
        } else {
            0.0
        };
    if !g.unsegmented.is_empty() {
        let names: Vec<&str> = g.unsegmented.iter().map(|n| n.as_str()).collect();
        let text = format!(
            "in no segment (no peers unless a \"*\" rule applies): {}",
            names.join(", ")
        );
        let _ = writeln!(
            body,
            r##"<text x="{MARGIN}" y="{:.1}" fill="#64748b">{}</text>"##,
            height,
            esc(&text)
        );
        width = width.max(MARGIN * 2.0 + text.chars().count() as f64 * CHAR_W);
        height += 30.0;
    }
    let mut s = String::new();
    let _ = writeln!(s, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, "<title>{}</title>", esc(title));
    s.push_str(concat!(
        "<defs>\n",
        r##"<marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="8" markerHeight="8" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#1f2937"/></marker>"##,
        "\n",
        r##"<marker id="arrow-deny" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="8" markerHeight="8" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#dc2626"/></marker>"##,
        "\n</defs>\n"
    ));
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);
    let _ = writeln!(
        s,
        r#"<text x="{MARGIN}" y="30" font-size="15" font-weight="bold">{}</text>"#,
        esc(title)
    );
    s.push_str(&body);
    s.push_str("</svg>\n");
    s
}
