package rulestest

import (
	"encoding/json"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/prometheus/promql/parser"
)

const (
	dashboardFile = "../../grafana/kubedefender.json"
	// metricsGolden is the metric families of a real `kubedefender serve`
	// scrape ("name type" lines), kept fresh by
	// e2e/metricnames_test.go's TestMetricNamesGoldenIsFresh.
	metricsGolden = "../metrics.golden.txt"
)

// Metrics the dashboard may query that KubeDefender does not expose.
var foreignMetrics = map[string]bool{"up": true}

type dashboard struct {
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	Type    string `json:"type"`
	Title   string `json:"title"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
}

func readDashboard(t *testing.T) dashboard {
	t.Helper()
	data, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	return d
}

// family is one metric family of the golden scrape.
type family struct {
	typ    string
	labels map[string]bool
}

// scrapedFamilies reads the golden scrape ("name type label,label" lines).
func scrapedFamilies(t *testing.T) map[string]family {
	t.Helper()
	data, err := os.ReadFile(metricsGolden)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]family{}
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || len(f) > 3 {
			t.Fatalf("%s: bad line %q", metricsGolden, line)
		}
		fam := family{typ: f[1], labels: map[string]bool{}}
		if len(f) == 3 {
			for _, l := range strings.Split(f[2], ",") {
				fam.labels[l] = true
			}
		}
		out[f[0]] = fam
	}
	if len(out) < 10 {
		t.Fatalf("%s lists %d families; regenerate it", metricsGolden, len(out))
	}
	return out
}

// grafanaVars stands in for Grafana's variables so that the parser sees PromQL.
var grafanaVars = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$__range", "1h", "${job}", "kubedefender", "$job", "kubedefender")

// lookup returns the family a series name belongs to: a family, or a
// histogram's _bucket, _sum or _count.
func lookup(families map[string]family, name string) (family, bool) {
	if f, ok := families[name]; ok {
		return f, f.typ != "histogram"
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		if base, ok := strings.CutSuffix(name, suffix); ok && families[base].typ == "histogram" {
			return families[base], true
		}
	}
	return family{}, false
}

// Labels every series has once scraped (target labels), and le on buckets.
var targetLabels = map[string]bool{"job": true, "instance": true, "le": true}

// TestDashboardQueriesParseAndNameRealMetrics parses every PromQL expression
// of the Grafana dashboard (panels and variables) with Prometheus's parser
// and checks that every metric it reads is in a real /metrics scrape of
// serve: a renamed metric fails here, not on an operator's screen.
func TestDashboardQueriesParseAndNameRealMetrics(t *testing.T) {
	d := readDashboard(t)
	families := scrapedFamilies(t)
	check := func(where, expr string) {
		e, err := promqlParser.ParseExpr(grafanaVars.Replace(expr))
		if err != nil {
			t.Errorf("%s: %q: %v", where, expr, err)
			return
		}
		n := 0
		parser.Inspect(e, func(node parser.Node, _ []parser.Node) error {
			switch node := node.(type) {
			case *parser.VectorSelector:
				n++
				if foreignMetrics[node.Name] {
					return nil
				}
				f, ok := lookup(families, node.Name)
				if !ok {
					t.Errorf("%s: %s is not in a real scrape of serve (%s)", where, node.Name, metricsGolden)
					return nil
				}
				for _, m := range node.LabelMatchers {
					if m.Name != "__name__" && !targetLabels[m.Name] && !f.labels[m.Name] {
						t.Errorf("%s: %s has no label %s in a real scrape", where, node.Name, m.Name)
					}
				}
			case *parser.AggregateExpr:
				if node.Without {
					return nil
				}
				// every grouping label is one of the aggregated series'
				have := map[string]bool{}
				parser.Inspect(node.Expr, func(inner parser.Node, _ []parser.Node) error {
					if vs, ok := inner.(*parser.VectorSelector); ok {
						f, _ := lookup(families, vs.Name)
						for l := range f.labels {
							have[l] = true
						}
					}
					return nil
				})
				for _, l := range node.Grouping {
					if !targetLabels[l] && !have[l] {
						t.Errorf("%s: groups by %s, which the series it aggregates do not have", where, l)
					}
				}
			}
			return nil
		})
		if n == 0 {
			t.Errorf("%s: %q reads no metric", where, expr)
		}
	}
	queries := 0
	for _, p := range d.Panels {
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			queries++
			check("panel "+p.Title, tg.Expr)
		}
	}
	labelValues := regexp.MustCompile(`^label_values\(([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?, *[a-zA-Z_]+\)$`)
	for _, v := range d.Templating.List {
		q, ok := v.Query.(map[string]any)
		if !ok {
			continue // the data source variable
		}
		s, _ := q["query"].(string)
		m := labelValues.FindStringSubmatch(s)
		if m == nil {
			t.Errorf("variable %s: %q is not label_values(metric, label)", v.Name, s)
			continue
		}
		check("variable "+v.Name, m[1]+m[2])
	}
	if queries < 20 {
		t.Errorf("the dashboard has %d queries; want every panel of docs/metrics.md's list", queries)
	}
}

// TestDashboardPanelsAreListedInTheDocs checks docs/metrics.md's list of
// dashboard panels is exact: every panel, and no other.
func TestDashboardPanelsAreListedInTheDocs(t *testing.T) {
	doc, err := os.ReadFile(metricsDoc)
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(doc), "\n## Dashboard\n")
	if !ok {
		t.Fatal("docs/metrics.md has no ## Dashboard section")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	section, _, _ = strings.Cut(section, "\n### ")
	listed := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^\s*[-*] \*\*(.+?)\*\*`).FindAllStringSubmatch(section, -1) {
		listed[m[1]] = true
	}
	inDashboard := map[string]bool{}
	for _, p := range readDashboard(t).Panels {
		inDashboard[p.Title] = true
		if !listed[p.Title] {
			t.Errorf("panel %q is not in docs/metrics.md's dashboard list", p.Title)
		}
	}
	for title := range listed {
		if !inDashboard[title] {
			t.Errorf("docs/metrics.md lists panel %q, which the dashboard does not have", title)
		}
	}
}
