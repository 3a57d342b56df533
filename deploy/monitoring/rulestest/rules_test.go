package rulestest

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/promql/promqltest"
	"github.com/prometheus/prometheus/rules"
	"gopkg.in/yaml.v3"
)

const (
	rulesFile  = "../alerts.yaml"
	testsFile  = "../alerts_test.yaml"
	metricsDoc = "../../../docs/metrics.md" // the metrics table and the dashboard's panels
	runbookDoc = "../../../docs/runbook.md" // the alerts table
)

// The test file, in promtool's format (the subset used here: input series,
// alert tests; exp_annotations are compared for the keys given).
type testFile struct {
	RuleFiles          []string       `yaml:"rule_files"`
	EvaluationInterval model.Duration `yaml:"evaluation_interval"`
	Tests              []testGroup    `yaml:"tests"`
}

type testGroup struct {
	Name        string          `yaml:"name"`
	Interval    model.Duration  `yaml:"interval"`
	InputSeries []inputSeries   `yaml:"input_series"`
	AlertTests  []alertTestCase `yaml:"alert_rule_test"`
}

type inputSeries struct {
	Series string `yaml:"series"`
	Values string `yaml:"values"`
}

type alertTestCase struct {
	EvalTime  model.Duration `yaml:"eval_time"`
	Alertname string         `yaml:"alertname"`
	ExpAlerts []expAlert     `yaml:"exp_alerts"`
}

type expAlert struct {
	ExpLabels      map[string]string `yaml:"exp_labels"`
	ExpAnnotations map[string]string `yaml:"exp_annotations"`
}

var promqlParser = parser.NewParser(parser.Options{})

func readTests(t *testing.T) *testFile {
	t.Helper()
	data, err := os.ReadFile(testsFile)
	if err != nil {
		t.Fatal(err)
	}
	var tf testFile
	dec := yaml.NewDecoder(strings.NewReader(string(data)))
	dec.KnownFields(true)
	if err := dec.Decode(&tf); err != nil {
		t.Fatalf("failed to decode %s: %v", testsFile, err)
	}
	if len(tf.RuleFiles) != 1 || tf.RuleFiles[0] != filepath.Base(rulesFile) {
		t.Fatalf("%s: rule_files %v, want [%s]", testsFile, tf.RuleFiles, filepath.Base(rulesFile))
	}
	if tf.EvaluationInterval == 0 {
		tf.EvaluationInterval = model.Duration(time.Minute)
	}
	return &tf
}

func parseRules(t *testing.T) *rulefmt.RuleGroups {
	t.Helper()
	groups, errs := rulefmt.ParseFile(rulesFile, false, model.UTF8Validation, promqlParser, slog.New(slog.DiscardHandler))
	for _, err := range errs {
		t.Errorf("%v", err)
	}
	if len(errs) > 0 {
		t.FailNow()
	}
	return groups
}

// TestEveryExpressionParses parses each rule's expression with the PromQL
// parser (rulefmt validates labels, annotations templates and durations too).
func TestEveryExpressionParses(t *testing.T) {
	for _, g := range parseRules(t).Groups {
		for _, r := range g.Rules {
			if _, err := promqlParser.ParseExpr(r.Expr); err != nil {
				t.Errorf("%s: %v", r.Alert, err)
			}
		}
	}
}

// TestAlertMetricsAreDocumented reads the metric names out of every
// expression's AST and checks each KubeDefender one is in docs/metrics.md's
// table (an alert on a metric that does not exist never fires), and that
// every alert is in docs/runbook.md's alerts table.
func TestAlertMetricsAreDocumented(t *testing.T) {
	doc, err := os.ReadFile(metricsDoc)
	if err != nil {
		t.Fatal(err)
	}
	alertsDoc, err := os.ReadFile(runbookDoc)
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range parseRules(t).Groups {
		for _, r := range g.Rules {
			expr, err := promqlParser.ParseExpr(r.Expr)
			if err != nil {
				t.Fatal(err)
			}
			parser.Inspect(expr, func(n parser.Node, _ []parser.Node) error {
				vs, ok := n.(*parser.VectorSelector)
				if !ok || !strings.HasPrefix(vs.Name, "kubedefender_") {
					return nil
				}
				if !strings.Contains(string(doc), "| `"+vs.Name+"` |") {
					t.Errorf("%s uses %s, which docs/metrics.md's table does not document", r.Alert, vs.Name)
				}
				return nil
			})
		}
		for _, r := range g.Rules {
			if !strings.Contains(string(alertsDoc), "| `"+r.Alert+"` |") {
				t.Errorf("alert %s is not in docs/runbook.md's alerts table", r.Alert)
			}
		}
	}
}

// TestEveryAlertIsTested checks each alert fires in at least one test and is
// asked to stay silent in at least one.
func TestEveryAlertIsTested(t *testing.T) {
	fires, silent := map[string]bool{}, map[string]bool{}
	for _, g := range readTests(t).Tests {
		for _, a := range g.AlertTests {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				silent[a.Alertname] = true
			}
		}
	}
	for _, g := range parseRules(t).Groups {
		for _, r := range g.Rules {
			if !fires[r.Alert] || !silent[r.Alert] {
				t.Errorf("%s: tested firing %v, tested silent %v; want both in %s", r.Alert, fires[r.Alert], silent[r.Alert], testsFile)
			}
		}
	}
}

// TestAlertRules evaluates the rule groups against each test group's series,
// one evaluation per evaluation_interval from time 0, and compares the firing
// alerts at each eval_time, as promtool does.
func TestAlertRules(t *testing.T) {
	tf := readTests(t)
	for _, tg := range tf.Tests {
		t.Run(tg.Name, func(t *testing.T) { runGroup(t, tg, time.Duration(tf.EvaluationInterval)) })
	}
}

func runGroup(t *testing.T, tg testGroup, evalInterval time.Duration) {
	if tg.Interval == 0 {
		tg.Interval = model.Duration(time.Minute)
	}
	var load strings.Builder
	fmt.Fprintf(&load, "load %s\n", tg.Interval)
	for _, s := range tg.InputSeries {
		fmt.Fprintf(&load, "  %s %s\n", s.Series, s.Values)
	}
	suite, err := promqltest.NewLazyLoader(load.String(), promqltest.LazyLoaderOpts{EnableAtModifier: true, EnableNegativeOffset: true, Parser: promqlParser})
	if err != nil {
		t.Fatalf("failed to load the input series: %v", err)
	}
	defer func() { _ = suite.Close() }()
	m := rules.NewManager(&rules.ManagerOptions{
		QueryFunc:    rules.EngineQueryFunc(suite.QueryEngine(), suite.Storage()),
		AppendableV2: suite.Storage(),
		Context:      context.Background(),
		NotifyFunc:   func(context.Context, string, ...*rules.Alert) {},
		Logger:       slog.New(slog.DiscardHandler),
		Parser:       promqlParser,
	})
	groups, errs := m.LoadGroups(evalInterval, labels.EmptyLabels(), "", nil, false, rulesFile)
	if len(errs) > 0 {
		t.Fatalf("failed to load %s: %v", rulesFile, errs)
	}
	byTime := map[time.Duration][]alertTestCase{}
	var maxT time.Duration
	for _, a := range tg.AlertTests {
		byTime[time.Duration(a.EvalTime)] = append(byTime[time.Duration(a.EvalTime)], a)
		maxT = max(maxT, time.Duration(a.EvalTime))
	}
	for _, g := range groups {
		for _, r := range g.Rules() {
			if ar, ok := r.(*rules.AlertingRule); ok {
				ar.SetRestored(true)
			}
		}
	}
	start := time.Unix(0, 0).UTC()
	for off := time.Duration(0); off <= maxT; off += evalInterval {
		ts := start.Add(off)
		suite.WithSamplesTill(ts, func(err error) {
			if err != nil {
				t.Fatalf("failed to append samples: %v", err)
			}
			for _, g := range groups {
				g.Eval(suite.Context(), ts)
				for _, r := range g.Rules() {
					if err := r.LastError(); err != nil {
						t.Fatalf("rule %s at %s: %v", r.Name(), off, err)
					}
				}
			}
		})
		// The alerts at an eval_time are those of the last evaluation at or before it.
		for et, cases := range byTime {
			if et < off || et >= off+evalInterval {
				continue
			}
			for _, tc := range cases {
				checkAlerts(t, groups, tc)
			}
		}
	}
}

func checkAlerts(t *testing.T, groups map[string]*rules.Group, tc alertTestCase) {
	t.Helper()
	var got []*rules.Alert
	found := false
	for _, g := range groups {
		for _, r := range g.Rules() {
			ar, ok := r.(*rules.AlertingRule)
			if !ok || ar.Name() != tc.Alertname {
				continue
			}
			found = true
			for _, a := range ar.ActiveAlerts() {
				if a.State == rules.StateFiring {
					got = append(got, a)
				}
			}
		}
	}
	if !found {
		t.Errorf("%s at %s: no such alert in %s", tc.Alertname, tc.EvalTime, rulesFile)
		return
	}
	sort.Slice(got, func(i, j int) bool { return labels.Compare(got[i].Labels, got[j].Labels) < 0 })
	var gotLabels, wantLabels []string
	for _, a := range got {
		gotLabels = append(gotLabels, a.Labels.String())
		a.Annotations.Range(func(l labels.Label) {
			if strings.Contains(l.Value, "<error expanding template") || strings.Contains(l.Value, "<no value>") {
				t.Errorf("%s at %s: annotation %s does not expand: %s", tc.Alertname, tc.EvalTime, l.Name, l.Value)
			}
		})
	}
	for _, e := range tc.ExpAlerts {
		ls := map[string]string{labels.AlertName: tc.Alertname}
		for k, v := range e.ExpLabels {
			ls[k] = v
		}
		wantLabels = append(wantLabels, labels.FromMap(ls).String())
	}
	slices.Sort(wantLabels)
	if !slices.Equal(gotLabels, wantLabels) {
		t.Errorf("%s at %s:\n  firing %v\n  want   %v", tc.Alertname, tc.EvalTime, gotLabels, wantLabels)
		return
	}
	for i, e := range sortedExp(tc) {
		for k, v := range e.ExpAnnotations {
			if got := got[i].Annotations.Get(k); got != v {
				t.Errorf("%s at %s: annotation %s = %q, want %q", tc.Alertname, tc.EvalTime, k, got, v)
			}
		}
	}
}

// sortedExp returns the expected alerts in the order of their labels, as the
// firing ones are sorted.
func sortedExp(tc alertTestCase) []expAlert {
	out := slices.Clone(tc.ExpAlerts)
	key := func(e expAlert) labels.Labels {
		ls := map[string]string{labels.AlertName: tc.Alertname}
		for k, v := range e.ExpLabels {
			ls[k] = v
		}
		return labels.FromMap(ls)
	}
	sort.Slice(out, func(i, j int) bool { return labels.Compare(key(out[i]), key(out[j])) < 0 })
	return out
}
