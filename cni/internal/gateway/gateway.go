// Package gateway is the plugin's half of the cni_gateway socket protocol (services/cni_gateway/server.py), the
// same as the Python plugin's (services/cni_gateway/plugin.py): per connection, one JSON request line
//
//	{"command": "ADD", "env": {"CNI_CONTAINERID": ..., ...}, "config": <the network configuration from stdin>}
//
// and one JSON reply line, {"ok": true, "result": {...}} or {"ok": false, "error": {"code", "msg", "details"}}.
// Failures to reach the gateway are CNI errors 11 (try again later; 50 for STATUS) whose msg starts with a coded
// reason (ServiceUnavailable, Timeout), with the Python plugin's messages.
package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/containernetworking/cni/pkg/types"
)

// DefaultSocket is used when the configuration names no "socket".
const DefaultSocket = "/run/cce-net/cni.sock"

// ConnectTimeout bounds the connect; replies have a deadline per command (ReplyTimeout).
const ConnectTimeout = 2 * time.Second

// MaxReplyBytes is where reading a reply stops.
const MaxReplyBytes = 1 << 20

// ReplyTimeout is how long the gateway may take: an ADD may wait for the node's pool to refill, then program the
// node.
var ReplyTimeout = map[string]time.Duration{
	"ADD": 90 * time.Second, "DEL": 60 * time.Second, "CHECK": 30 * time.Second,
	"STATUS": 10 * time.Second, "GC": 120 * time.Second,
}

// EnvKeys are the CNI variables forwarded to the gateway (those set, even when empty).
var EnvKeys = []string{"CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH"}

type request struct {
	Command string            `json:"command"`
	Env     map[string]string `json:"env"`
	Config  json.RawMessage   `json:"config"`
}

// Env collects EnvKeys from lookup (os.LookupEnv in the plugin).
func Env(lookup func(string) (string, bool)) map[string]string {
	env := map[string]string{}
	for _, key := range EnvKeys {
		if value, ok := lookup(key); ok {
			env[key] = value
		}
	}
	return env
}

// SocketOf is the configuration's "socket", or DefaultSocket.
func SocketOf(config []byte) string {
	var conf struct {
		Socket any `json:"socket"`
	}
	if json.Unmarshal(config, &conf) == nil {
		if path, ok := conf.Socket.(string); ok && path != "" {
			return path
		}
	}
	return DefaultSocket
}

// Forward runs command through the gateway and returns its result object ({} when the reply carries none).
func Forward(command string, config []byte, env map[string]string) (json.RawMessage, *types.Error) {
	path := SocketOf(config)
	var line bytes.Buffer
	encoder := json.NewEncoder(&line) // one line: the encoder compacts the configuration and ends with "\n"
	encoder.SetEscapeHTML(false)
	if err := encoder.Encode(request{Command: command, Env: env, Config: config}); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "network configuration on stdin is not JSON", err.Error())
	}
	data, err := exchange(path, line.Bytes(), ReplyTimeout[command])
	if err != nil {
		return nil, unreachable(command, path, err)
	}
	return interpret(data)
}

// exchange sends one request line and reads one reply line (or up to EOF or MaxReplyBytes).
func exchange(path string, line []byte, timeout time.Duration) ([]byte, error) {
	conn, err := net.DialTimeout("unix", path, ConnectTimeout)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(timeout)); err != nil {
		return nil, err
	}
	if _, err := conn.Write(line); err != nil {
		return nil, err
	}
	var reply []byte
	chunk := make([]byte, 65536)
	for {
		n, err := conn.Read(chunk)
		reply = append(reply, chunk[:n]...)
		if n > 0 && (reply[len(reply)-1] == '\n' || len(reply) > MaxReplyBytes) {
			return reply, nil
		}
		if errors.Is(err, io.EOF) {
			return reply, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// unreachable is the CNI error for a gateway that could not be reached or did not answer in time.
func unreachable(command, path string, err error) *types.Error {
	code := types.ErrTryAgainLater
	if command == "STATUS" {
		code = types.ErrPluginNotAvailable
	}
	var netErr net.Error
	switch {
	case errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED):
		return types.NewError(code, fmt.Sprintf("ServiceUnavailable: the cni gateway is not running (socket %s)",
			path), "ServiceUnavailable: "+describe(err))
	case errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &netErr) && netErr.Timeout()):
		return types.NewError(code, "Timeout: no reply from the cni gateway at "+path, "Timeout")
	default:
		return types.NewError(code, fmt.Sprintf("ServiceUnavailable: cannot talk to the cni gateway at %s: %s",
			path, describe(err)), "ServiceUnavailable")
	}
}

// describe says an OS error as the Python plugin does ("[Errno 2] No such file or directory").
func describe(err error) string {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return err.Error()
	}
	text := errno.Error()
	if text != "" {
		text = strings.ToUpper(text[:1]) + text[1:]
	}
	return fmt.Sprintf("[Errno %d] %s", int(errno), text)
}

// interpret turns the gateway's reply line into the result object or the CNI error it carries.
func interpret(data []byte) (json.RawMessage, *types.Error) {
	data = bytes.TrimSpace(data)
	if len(data) == 0 {
		// the gateway went away mid-request (killed, restarting): retryable, and coded as such
		return nil, types.NewError(types.ErrIOFailure,
			"ServiceUnavailable: the cni gateway closed the connection without a reply", "ServiceUnavailable")
	}
	var reply map[string]json.RawMessage
	if err := json.Unmarshal(data, &reply); err != nil {
		var typeErr *json.UnmarshalTypeError
		if !errors.As(err, &typeErr) {
			return nil, types.NewError(types.ErrIOFailure, "the cni gateway sent a reply that is not JSON", err.Error())
		}
	}
	if reply == nil {
		return nil, types.NewError(types.ErrIOFailure, "the cni gateway sent a reply that is not a JSON object", "")
	}
	var ok bool
	if json.Unmarshal(reply["ok"], &ok) == nil && ok {
		if result := bytes.TrimSpace(reply["result"]); len(result) > 0 && result[0] == '{' {
			return result, nil
		}
		return json.RawMessage("{}"), nil
	}
	return nil, carriedError(reply["error"], data)
}

// carriedError is the CNI error of a failed reply: its code must be an integer.
func carriedError(raw json.RawMessage, reply []byte) *types.Error {
	var failure map[string]json.RawMessage
	var code int64
	if json.Unmarshal(raw, &failure) != nil || failure == nil || json.Unmarshal(failure["code"], &code) != nil ||
		code < 0 {
		details := string(reply)
		if len(details) > 500 {
			details = details[:500]
		}
		return types.NewError(types.ErrIOFailure, "the cni gateway sent an error reply without a code", details)
	}
	return types.NewError(uint(code), text(failure["msg"]), text(failure["details"]))
}

// text is a JSON string's value, a missing field's "", or any other value's JSON.
func text(raw json.RawMessage) string {
	if len(raw) == 0 {
		return ""
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	return string(raw)
}
