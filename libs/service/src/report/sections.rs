//! The page's plotted sections: metric history across versions, the recall curve against
//! popularity, customers and CLV per value tier, offer response per tier; each an inline
//! SVG drawn with plotters, with its table or words when there is nothing to draw.

use super::*;

pub(crate) fn figure(svg: &str, caption: &str) -> Markup {
    html! { figure { (PreEscaped(svg)) figcaption { (caption) } } }
}

/// Draws into an SVG string. The `xmlns` attribute is dropped: inline SVG in HTML needs
/// none, and the page then names no network address at all.
pub(crate) fn svg(
    size: (u32, u32),
    draw: impl FnOnce(
        &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    ) -> std::result::Result<(), String>,
) -> Result<String> {
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, size).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| Error::runtime("draw a plot", e))?;
        draw(&root).map_err(|e| Error::runtime("draw a plot", e))?;
        root.present()
            .map_err(|e| Error::runtime("draw a plot", e))?;
    }
    Ok(buf.replacen(" xmlns=\"http://www.w3.org/2000/svg\"", "", 1))
}

/// Plotters' errors as text (they are generic over the backend's error).
pub(crate) fn s<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Upper end of a y axis showing `max` with some headroom (never empty).
pub(crate) fn top(max: f64) -> f64 {
    if max.is_finite() && max > 0.0 {
        max * 1.15
    } else {
        1.0
    }
}

pub(crate) fn history_section(data: &ReportData) -> Result<Markup> {
    let points: Vec<(usize, &VersionView, Figures)> = data
        .history
        .iter()
        .filter_map(|v| figures(&v.entry).map(|f| (v, f)))
        .enumerate()
        .map(|(i, (v, f))| (i, v, f))
        .collect();
    if points.is_empty() {
        return Ok(html! {
            p.note { "No version of this tenant has recorded holdout metrics." }
        });
    }
    let ks: std::collections::BTreeSet<usize> = points.iter().map(|p| p.2.k).collect();
    let k_label = if ks.len() == 1 {
        ks.iter().next().map_or(String::new(), |k| k.to_string())
    } else {
        "k".to_owned()
    };
    let n = points.len() as i32;
    let ymax = top(points
        .iter()
        .map(|p| p.2.recall.max(p.2.ndcg))
        .fold(0.0, f64::max));
    let reported = &data.version.entry.version;
    let svg = svg((WIDTH, HEIGHT), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!("recall@{k_label} and NDCG@{k_label} per version, oldest to newest"),
                (FONT, 18),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d((0..n - 1).into_segmented(), 0f64..ymax)
            .map_err(s)?;
        chart
            .configure_mesh()
            .max_light_lines(2)
            .disable_x_mesh()
            .x_labels(points.len().min(20))
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => format!("#{}", i + 1),
                _ => String::new(),
            })
            .x_desc("version (numbered as in the table below)")
            .y_desc("on the holdout")
            .label_style((FONT, 13))
            .draw()
            .map_err(s)?;
        let at = |i: usize| SegmentValue::CenterOf(i as i32);
        for (name, colour, get) in [
            (
                "recall",
                BLUE,
                (|f: &Figures| f.recall) as fn(&Figures) -> f64,
            ),
            ("NDCG", ORANGE, |f: &Figures| f.ndcg),
        ] {
            chart
                .draw_series(LineSeries::new(
                    points.iter().map(|p| (at(p.0), get(&p.2))),
                    colour.stroke_width(2),
                ))
                .map_err(s)?
                .label(format!("{name}@{k_label}"))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
                });
            chart
                .draw_series(
                    points
                        .iter()
                        .map(|p| Circle::new((at(p.0), get(&p.2)), 3, colour.filled())),
                )
                .map_err(s)?;
        }
        // Marks and their legend entries only when some version carries them.
        let live: Vec<_> = points.iter().filter(|p| p.1.live).collect();
        if !live.is_empty() {
            chart
                .draw_series(live.iter().flat_map(|p| {
                    [p.2.recall, p.2.ndcg]
                        .map(|y| Circle::new((at(p.0), y), 8, GREEN.stroke_width(2)))
                }))
                .map_err(s)?
                .label("live")
                .legend(|(x, y)| Circle::new((x + 9, y), 6, GREEN.stroke_width(2)));
        }
        let rejected: Vec<_> = points
            .iter()
            .filter(|p| p.1.entry.status == ModelStatus::Rejected)
            .collect();
        if !rejected.is_empty() {
            chart
                .draw_series(rejected.iter().flat_map(|p| {
                    [p.2.recall, p.2.ndcg]
                        .map(|y| Cross::new((at(p.0), y), 6, RED_MARK.stroke_width(2)))
                }))
                .map_err(s)?
                .label("rejected by the gate")
                .legend(|(x, y)| Cross::new((x + 9, y), 5, RED_MARK.stroke_width(2)));
        }
        chart
            .draw_series(
                points
                    .iter()
                    .filter(|p| &p.1.entry.version == reported)
                    .map(|p| {
                        PathElement::new(
                            vec![(at(p.0), 0.0), (at(p.0), ymax)],
                            GREY.stroke_width(1),
                        )
                    }),
            )
            .map_err(s)?
            .label("this report's version")
            .legend(|(x, y)| PathElement::new(vec![(x + 9, y - 6), (x + 9, y + 6)], GREY));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .label_font((FONT, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(GREY)
            .draw()
            .map_err(s)?;
        Ok(())
    })?;
    let missing = data.history.len() - points.len();
    Ok(html! {
        (figure(
            &svg,
            "Holdout metrics of each registered version (each fitted without its holdout). Green rings: the version serving now; red crosses: rejected by the promotion gate.",
        ))
        table {
            tr {
                th { "#" } th { "Version" } th { "Registered" } th { "Status" } th { "k" }
                th { "recall@k" } th { "NDCG@k" }
            }
            @for (i, v, f) in &points {
                tr {
                    td.n { (i + 1) }
                    td { code { (v.entry.version.as_str()) } }
                    td { (v.entry.created_at.to_rfc3339_opts(SecondsFormat::Secs, true)) }
                    td { (status_html(v)) }
                    td.n { (f.k) }
                    td.n { (num(f.recall)) }
                    td.n { (num(f.ndcg)) }
                }
            }
        }
        @if missing > 0 {
            p.note { (missing) " version(s) carry no recall/NDCG figures and are not drawn." }
        }
    })
}

pub(crate) fn curve_svg(curve: &RecallCurve) -> Result<String> {
    let kmax = curve.points.iter().map(|p| p.k).max().unwrap_or(1).max(2) as f64;
    let ymax = top(curve
        .points
        .iter()
        .map(|p| p.candidate.max(p.popularity))
        .fold(0.0, f64::max));
    svg((WIDTH, HEIGHT), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption("recall@k: this model against popularity", (FONT, 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d((1f64..kmax * 1.1).log_scale(), 0f64..ymax)
            .map_err(s)?;
        chart
            .configure_mesh()
            .max_light_lines(2)
            .x_desc("k (log scale)")
            .y_desc("recall@k")
            .label_style((FONT, 13))
            .x_label_formatter(&|x| format!("{x:.0}"))
            .draw()
            .map_err(s)?;
        for (name, colour, get) in [
            (
                "this model",
                BLUE,
                (|p: &crate::retrain::CurvePoint| p.candidate)
                    as fn(&crate::retrain::CurvePoint) -> f64,
            ),
            ("popularity", GREY, |p: &crate::retrain::CurvePoint| {
                p.popularity
            }),
        ] {
            chart
                .draw_series(LineSeries::new(
                    curve.points.iter().map(|p| (p.k as f64, get(p))),
                    colour.stroke_width(2),
                ))
                .map_err(s)?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(2))
                });
            chart
                .draw_series(
                    curve
                        .points
                        .iter()
                        .map(|p| Circle::new((p.k as f64, get(p)), 3, colour.filled())),
                )
                .map_err(s)?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font((FONT, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(GREY)
            .draw()
            .map_err(s)?;
        Ok(())
    })
}

pub(crate) fn curve_table(curve: &RecallCurve) -> Markup {
    html! {
        table {
            tr { th { "k" } @for p in &curve.points { th { (p.k) } } }
            tr { td { "this model" } @for p in &curve.points { td.n { (num(p.candidate)) } } }
            tr { td { "popularity" } @for p in &curve.points { td.n { (num(p.popularity)) } } }
        }
    }
}

/// Customers and CLV of one tier.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct TierTotals {
    customers: u64,
    clv: f64,
    /// Customers without a CLV (no Gamma-Gamma fit for them).
    no_clv: u64,
}

/// Tier names in the snapshot's configured order, then any others seen (`extra`).
pub(crate) fn tier_order<'a>(
    snapshot: &CrmSnapshot,
    extra: impl Iterator<Item = &'a String>,
) -> Vec<String> {
    let mut names: Vec<String> = snapshot
        .profiles
        .config
        .tiers
        .names()
        .map(str::to_owned)
        .collect();
    for n in extra {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    names
}

pub(crate) fn tier_totals(snapshot: &CrmSnapshot) -> BTreeMap<String, TierTotals> {
    let mut by: BTreeMap<String, TierTotals> = BTreeMap::new();
    for (_, p) in &snapshot.profiles.customers {
        let t = by.entry(p.tier.clone()).or_default();
        t.customers += 1;
        match p.clv {
            Some(v) if v.is_finite() => t.clv += v,
            _ => t.no_clv += 1,
        }
    }
    by
}

/// A bar chart over named categories: one bar per series and category, the later series
/// drawn narrower inside the earlier ones (shown and accepted read as part of a whole).
pub(crate) fn bars_svg(
    caption: &str,
    y_desc: &str,
    names: &[String],
    series: &[(&str, RGBColor, Vec<f64>)],
) -> Result<String> {
    let n = names.len().max(1) as i32;
    let max = series
        .iter()
        .flat_map(|s| s.2.iter().copied())
        .fold(0.0, f64::max);
    // Room above the bars for the legend when there is one.
    let ymax = if series.len() > 1 {
        top(max) * 1.3
    } else {
        top(max)
    };
    svg((WIDTH / 2 - 10, HEIGHT), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(caption, (FONT, 16))
            .margin(10)
            .x_label_area_size(32)
            .y_label_area_size(72)
            .build_cartesian_2d((0..n - 1).into_segmented(), 0f64..ymax)
            .map_err(s)?;
        chart
            .configure_mesh()
            .max_light_lines(2)
            .disable_x_mesh()
            .x_labels(names.len())
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => names.get(*i as usize).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .y_desc(y_desc)
            .y_label_formatter(&|v| {
                if max >= 10.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v:.1}")
                }
            })
            .label_style((FONT, 13))
            .draw()
            .map_err(s)?;
        for (depth, (name, colour, values)) in series.iter().enumerate() {
            let inset = 8 + 14 * depth as u32;
            let colour = *colour;
            chart
                .draw_series(values.iter().enumerate().map(|(i, &v)| {
                    let i = i as i32;
                    let mut r = Rectangle::new(
                        [
                            (SegmentValue::Exact(i), 0.0),
                            (SegmentValue::Exact(i + 1), v),
                        ],
                        colour.filled(),
                    );
                    r.set_margin(0, 0, inset, inset);
                    r
                }))
                .map_err(s)?
                .label(*name)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled())
                });
        }
        if series.len() > 1 {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .label_font((FONT, 13))
                .background_style(WHITE.mix(0.85))
                .border_style(GREY)
                .draw()
                .map_err(s)?;
        }
        Ok(())
    })
}

pub(crate) fn tier_section(snapshot: &CrmSnapshot) -> Result<Markup> {
    let totals = tier_totals(snapshot);
    let names = tier_order(snapshot, totals.keys());
    let names: Vec<String> = names
        .into_iter()
        .filter(|n| totals.contains_key(n))
        .collect();
    if names.is_empty() {
        return Ok(html! { p.note { "The snapshot holds no customer profiles." } });
    }
    let get = |n: &String| totals.get(n).cloned().unwrap_or_default();
    let customers: Vec<f64> = names.iter().map(|n| get(n).customers as f64).collect();
    let clv: Vec<f64> = names.iter().map(|n| get(n).clv).collect();
    let a = bars_svg(
        "Customers per tier",
        "customers",
        &names,
        &[("customers", BLUE, customers)],
    )?;
    let b = bars_svg(
        "Total CLV per tier",
        "CLV (major units)",
        &names,
        &[("CLV", GREEN, clv)],
    )?;
    Ok(html! {
        figure {
            (PreEscaped(a))
            (PreEscaped(b))
            figcaption {
                "Value tiers of this version's customer insight snapshot ("
                (snapshot.profiles.customers.len())
                " customers): how many customers each tier holds and their summed "
                (snapshot.profiles.config.clv_months) "-month CLV."
            }
        }
        table {
            tr { th { "Tier" } th { "Customers" } th { "Total CLV" } th { "Without CLV" } }
            @for n in &names {
                @let t = get(n);
                tr {
                    td { (n) }
                    td.n { (t.customers) }
                    td.n { (format!("{:.2}", t.clv)) }
                    td.n { (t.no_clv) }
                }
            }
        }
        @for note in &snapshot.profiles.notes {
            p.note { (note) }
        }
    })
}

pub(crate) fn offer_section(data: &ReportData) -> Result<Markup> {
    let o = &data.offers;
    if o.events == 0 {
        return Ok(html! {
            p.note {
                "No offer events recorded yet (" (o.offers) " offers): record shown, accepted \
                 and declined events through " code { "POST /v1/offers/events" }
                " to see the response."
            }
        });
    }
    let rate = |r: &Response| {
        r.acceptance_rate
            .map_or("–".to_owned(), |x| format!("{:.1}%", x * 100.0))
    };
    let cells = |r: &Response| {
        html! {
            td.n { (r.shown) } td.n { (r.accepted) } td.n { (r.declined) } td.n { (rate(r)) }
        }
    };
    let by_tier = match &data.snapshot {
        Some(s) if !o.by_tier.is_empty() => {
            let names = tier_order(s, o.by_tier.keys());
            let names: Vec<String> = names
                .into_iter()
                .filter(|n| o.by_tier.contains_key(n))
                .collect();
            let get = |n: &String| o.by_tier.get(n).cloned().unwrap_or_default();
            let shown: Vec<f64> = names.iter().map(|n| get(n).shown as f64).collect();
            let accepted: Vec<f64> = names.iter().map(|n| get(n).accepted as f64).collect();
            let chart = bars_svg(
                "Offers shown and accepted per tier",
                "events",
                &names,
                &[
                    ("shown (sent)", GREY, shown),
                    ("accepted (converted)", BLUE, accepted),
                ],
            )?;
            let caption = format!(
                "All {} offers' events ({} in all), by the customer's tier in this version's snapshot.",
                o.offers, o.events
            );
            Some((
                chart,
                caption,
                names
                    .iter()
                    .map(|n| (n.clone(), get(n)))
                    .collect::<Vec<_>>(),
            ))
        }
        _ => None,
    };
    Ok(html! {
        @if let Some((chart, caption, _)) = &by_tier {
            (figure(chart, caption))
        } @else {
            p.note {
                "Without a customer insight snapshot the events cannot be split by tier; totals only."
            }
        }
        table {
            tr {
                th { @if by_tier.is_some() { "Tier" } }
                th { "Shown" } th { "Accepted" } th { "Declined" } th { "Acceptance" }
            }
            @if let Some((_, _, rows)) = &by_tier {
                @for (n, r) in rows {
                    tr { td { (n) } (cells(r)) }
                }
            }
            tr { th { "all customers" } (cells(&o.total)) }
        }
        @if o.truncated > 0 {
            p.note {
                (o.truncated) " offer(s) have more than " (crm::OFFER_EVENT_LIMIT)
                " events: only the newest " (crm::OFFER_EVENT_LIMIT) " of each are counted."
            }
        }
    })
}
