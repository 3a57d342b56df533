package app

import (
	"errors"

	"github.com/spf13/cobra"
)

// The commands below are wired in by the issues that build them; until then
// they say so and exit non-zero rather than pretending to work.

func pending(use, short, issue string) *cobra.Command {
	return &cobra.Command{
		Use:   use,
		Short: short + " (not built yet)",
		RunE: func(*cobra.Command, []string) error {
			return errors.New(use + " is not built yet: see " + issue)
		},
	}
}

func newStatusCommand(Streams) *cobra.Command {
	return pending("status", "Show budgets, breakers and overrides of running replicas", "issue 6")
}
