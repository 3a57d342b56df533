package app

import (
	"encoding/json"
	"fmt"
	"runtime"

	"github.com/spf13/cobra"

	"github.com/kubedefender/kubedefender/version"
)

// versionInfo is `version -o json`.
type versionInfo struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	Date      string `json:"date"`
	GoVersion string `json:"goVersion"`
	Platform  string `json:"platform"`
}

func newVersionCommand(s Streams) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			switch output {
			case "text":
				_, err := fmt.Fprintln(s.Out, version.String())
				return err
			case "json":
				enc := json.NewEncoder(s.Out)
				enc.SetIndent("", "  ")
				return enc.Encode(versionInfo{
					Version:   version.Version,
					Commit:    version.Commit,
					Date:      version.Date,
					GoVersion: runtime.Version(),
					Platform:  runtime.GOOS + "/" + runtime.GOARCH,
				})
			default:
				return fmt.Errorf("--output must be text or json, not %q", output)
			}
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "text", "text or json")
	return cmd
}
