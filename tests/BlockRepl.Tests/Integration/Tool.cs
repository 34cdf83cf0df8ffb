using System.Diagnostics;
using Xunit;

namespace BlockRepl.Tests.Integration;

/// <summary>What a finished external command printed and how it exited.</summary>
internal sealed record ToolResult(string CommandLine, int ExitCode, string Stdout, string Stderr)
{
    public ToolResult EnsureSuccess()
    {
        if (ExitCode != 0)
        {
            Assert.Fail($"`{CommandLine}` exited with code {ExitCode}.\n{this}");
        }

        return this;
    }

    public override string ToString() => $"stdout:\n{Stdout}\nstderr:\n{Stderr}";
}

/// <summary>
/// Runs the external NBD clients a user has (qemu-io, qemu-img, nbdinfo, nbdcopy, fio, python3 with libnbd).
/// A missing tool fails the test with the command that installs it: it never turns into a silent pass.
/// </summary>
internal static class Tool
{
    /// <summary>A guard against hangs, not a timing assertion.</summary>
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(120);

    /// <summary>Debian 12 package for each tool the tests run (tools/install-deps.sh installs them all).</summary>
    private static readonly Dictionary<string, string> Packages = new(StringComparer.Ordinal)
    {
        ["qemu-io"] = "qemu-utils",
        ["qemu-img"] = "qemu-utils",
        ["qemu-nbd"] = "qemu-utils",
        ["nbdinfo"] = "libnbd-bin",
        ["nbdcopy"] = "libnbd-bin",
        ["nbdsh"] = "libnbd-bin",
        ["fio"] = "fio",
        ["nbdkit"] = "nbdkit",
        ["stat"] = "coreutils",
        ["iscsi-test-cu"] = "libiscsi-bin",
        [QemuIscsiDriver] = "qemu-block-extra",
        ["iscsi-ls"] = "libiscsi-bin",
        ["iscsi-inq"] = "libiscsi-bin",
        ["iscsi-readcapacity16"] = "libiscsi-bin",
        ["/usr/bin/python3"] = "python3-libnbd",
    };

    /// <summary>qemu's iscsi:// block driver (a module of Debian's qemu-block-extra).</summary>
    public const string QemuIscsiDriver = "/usr/lib/x86_64-linux-gnu/qemu/block-iscsi.so";

    public static string InstallHint(string package) =>
        $"install it with `apt-get install -y --no-install-recommends {package}` (or run `make deps`)";

    /// <summary>The full path of <paramref name="name"/> (searched on PATH unless rooted); fails the test if absent.</summary>
    public static string Require(string name)
    {
        if (Path.IsPathRooted(name))
        {
            if (File.Exists(name))
            {
                return name;
            }
        }
        else
        {
            var path = Environment.GetEnvironmentVariable("PATH") ?? "/usr/local/bin:/usr/bin:/bin";
            foreach (var dir in path.Split(':', StringSplitOptions.RemoveEmptyEntries))
            {
                var candidate = Path.Combine(dir, name);
                if (File.Exists(candidate))
                {
                    return candidate;
                }
            }
        }

        var package = Packages.GetValueOrDefault(name, name);
        Assert.Fail($"{name} is not installed: {InstallHint(package)}");
        return null!;
    }

    public static Task<ToolResult> RunAsync(string name, params string[] args) =>
        RunAsync(name, args, DefaultTimeout);

    /// <summary>Runs a tool to completion with stdin closed; kills it and fails the test after <paramref name="timeout"/>.</summary>
    public static async Task<ToolResult> RunAsync(string name, IEnumerable<string> args, TimeSpan timeout)
    {
        var psi = new ProcessStartInfo(Require(name))
        {
            UseShellExecute = false,
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        foreach (var arg in args)
        {
            psi.ArgumentList.Add(arg);
        }

        var commandLine = psi.FileName + " " + string.Join(' ', psi.ArgumentList.Select(Quote));
        using var process = Process.Start(psi) ?? throw new InvalidOperationException($"could not start {commandLine}");
        process.StandardInput.Close();
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var cts = new CancellationTokenSource(timeout);
        try
        {
            await process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            await process.WaitForExitAsync();
            Assert.Fail($"`{commandLine}` did not finish within {timeout.TotalSeconds} s and was killed.\n"
                + $"stdout:\n{await stdout}\nstderr:\n{await stderr}");
        }

        return new ToolResult(commandLine, process.ExitCode, await stdout, await stderr);
    }

    private static string Quote(string arg) =>
        arg.Length > 0 && arg.All(c => char.IsAsciiLetterOrDigit(c) || "-_./:=,+@%".Contains(c, StringComparison.Ordinal))
            ? arg
            : "'" + arg.Replace("'", "'\\''", StringComparison.Ordinal) + "'";
}
