// compose-check: what `docker compose config --quiet` checks, without Docker.
//
// Loads a compose file with compose-go v2, the library Docker Compose v2 is
// built on: interpolation (with an env file), the Compose Specification's
// schema and Compose v2's own checks (a scalable service with a fixed
// container_name, say). Exit 0 and the service names on stderr if the file
// is valid; exit 1 and the reason otherwise.
//
//	compose-check FILE ENV_FILE
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/compose-spec/compose-go/v2/cli"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: compose-check FILE ENV_FILE")
		os.Exit(2)
	}
	file, env := os.Args[1], os.Args[2]
	opts, err := cli.NewProjectOptions(
		[]string{file},
		cli.WithWorkingDirectory(filepath.Dir(file)),
		cli.WithEnvFiles(env),
		cli.WithDotEnv,
		cli.WithName("cityvitals"),
	)
	if err != nil {
		fmt.Fprintln(os.Stderr, "compose-check:", err)
		os.Exit(1)
	}
	project, err := opts.LoadProject(context.Background())
	if err != nil {
		fmt.Fprintln(os.Stderr, "invalid:", err)
		os.Exit(1)
	}
	fmt.Fprintln(os.Stderr, "valid, services:", project.ServiceNames())
}
