// Command cce is the native cce CNI plugin: the binary a container runtime execs for every pod (CNI spec 1.0.0,
// STATUS and GC of 1.1.0; 0.3.x and 0.4.0 configurations accepted). It is a drop-in for the Python plugin
// (services/cni_gateway/plugin.py) on nodes without Python: a static executable that needs no libc.
//
// The CNI library's skel parses the environment, checks versions and answers VERSION; every other command is
// forwarded to the node's cni_gateway over its unix socket (package gateway) and the reply is printed as the CNI
// result (ADD) or as a CNI error {"cniVersion", "code", "msg", "details"} with exit code 1, in the configuration's
// version when we support it, as the Python plugin does.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/ns"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"cce-network.local/cni/internal/gateway"
)

// supported is what the Python plugin reports (SUPPORTED_VERSIONS); the tests compare both plugins' VERSION.
var supported = version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

func main() {
	os.Exit(run())
}

func run() int {
	command := os.Getenv("CNI_COMMAND")
	if command == "" {
		fmt.Fprintf(os.Stderr, "cce CNI plugin; CNI protocol versions supported: %s\n",
			strings.Join(supported.SupportedVersions(), ", "))
	}
	var stdin []byte
	if command != "VERSION" {
		data, err := io.ReadAll(os.Stdin)
		if err != nil {
			return fail(version.Current(), types.NewError(types.ErrIOFailure, "cannot read stdin", err.Error()))
		}
		stdin = data
		if err := replayStdin(data); err != nil {
			return fail(version.Current(), types.NewError(types.ErrIOFailure, "cannot replay stdin", err.Error()))
		}
	}
	funcs := skel.CNIFuncs{Add: add, Del: forward("DEL"), Check: forward("CHECK"), Status: forward("STATUS"),
		GC: forward("GC")}
	// No "about" text: without CNI_COMMAND skel then reports the missing variable as a CNI error (code 4), as the
	// Python plugin does, instead of exiting 0.
	if err := skel.PluginMainFuncsWithError(funcs, supported, ""); err != nil {
		return fail(errorVersion(stdin), err)
	}
	return 0
}

// replayStdin hands the configuration already read to skel, which reads os.Stdin itself.
func replayStdin(data []byte) error {
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	go func() {
		_, _ = w.Write(data)
		_ = w.Close()
	}()
	os.Stdin = r
	return nil
}

func add(args *skel.CmdArgs) error {
	if err := notPluginNetns(args); err != nil {
		return err
	}
	result, err := gateway.Forward("ADD", args.StdinData, gateway.Env(os.LookupEnv))
	if err != nil {
		return err
	}
	if _, werr := os.Stdout.Write(result); werr != nil {
		return types.NewError(types.ErrIOFailure, "cannot write the result", werr.Error())
	}
	return nil
}

// notPluginNetns refuses, before anything is done, the pod netns skel refuses only after ADD or DEL ran (its check
// comes after the command: the pod was set up, its result printed, then an error printed after it): the plugin's own
// netns, unless CNI_NETNS_OVERRIDE says it is meant. A netns that cannot be opened is the gateway's to judge.
func notPluginNetns(args *skel.CmdArgs) error {
	if strings.ToUpper(args.NetnsOverride) == "TRUE" || args.NetnsOverride == "1" {
		return nil
	}
	own, err := ns.CheckNetNS(args.Netns)
	if err != nil {
		return err
	}
	if own {
		return types.NewError(types.ErrInvalidNetNS, "plugin's netns and netns from CNI_NETNS should not be the same", "")
	}
	return nil
}

// forward runs a command whose success prints nothing.
func forward(command string) func(*skel.CmdArgs) error {
	return func(args *skel.CmdArgs) error {
		if command == "DEL" {
			if err := notPluginNetns(args); err != nil {
				return err
			}
		}
		if _, err := gateway.Forward(command, args.StdinData, gateway.Env(os.LookupEnv)); err != nil {
			return err
		}
		return nil
	}
}

// errorVersion is the version errors are printed in: the configuration's when we support it, else ours.
func errorVersion(stdin []byte) string {
	var conf map[string]any
	if json.Unmarshal(stdin, &conf) == nil {
		if requested, ok := conf["cniVersion"].(string); ok && slices.Contains(supported.SupportedVersions(), requested) {
			return requested
		}
	}
	return version.Current()
}

// cniError is types.Error with the cniVersion a CNI error carries, every field always present.
type cniError struct {
	CNIVersion string `json:"cniVersion"`
	Code       uint   `json:"code"`
	Msg        string `json:"msg"`
	Details    string `json:"details"`
}

func fail(cniVersion string, err *types.Error) int {
	out, merr := json.Marshal(cniError{CNIVersion: cniVersion, Code: err.Code, Msg: err.Msg, Details: err.Details})
	if merr == nil {
		_, _ = os.Stdout.Write(out)
	}
	return 1
}
