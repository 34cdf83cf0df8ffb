using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text;
using Xunit;

namespace BlockRepl.Tests.Integration;

/// <summary>
/// A long-running child process (the daemon, or a client that must stay connected) whose stdout lines and
/// stderr are collected as they arrive. Disposing always kills it, so a failing test never leaks a process.
/// </summary>
/// <remarks>
/// Invariant: every member of <see cref="_stdoutLines"/>, <see cref="_stderr"/>, <see cref="_waiters"/> and
/// <see cref="_stderrWaiters"/> is
/// touched only under <see cref="_gate"/>; the Process events run on thread-pool threads.
/// </remarks>
internal sealed partial class ChildProcess : IAsyncDisposable
{
    public const int SIGINT = 2;
    public const int SIGKILL = 9;
    public const int SIGTERM = 15;

    /// <summary>How long anything may take before the test gives up: a guard against hangs, not a timing assertion.</summary>
    public static readonly TimeSpan HangLimit = TimeSpan.FromSeconds(60);

    private readonly Process _process;
    private readonly Lock _gate = new();
    private readonly List<string> _stdoutLines = [];
    private readonly StringBuilder _stderr = new();
    private readonly List<(Func<string, bool> Match, TaskCompletionSource<string> Found)> _waiters = [];
    private readonly List<(Func<string, bool> Match, TaskCompletionSource<string> Found)> _stderrWaiters = [];
    private readonly TaskCompletionSource _stdoutClosed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource _stderrClosed = new(TaskCreationOptions.RunContinuationsAsynchronously);

    private ChildProcess(Process process, string commandLine)
    {
        _process = process;
        CommandLine = commandLine;
    }

    public string CommandLine { get; }

    public int Id => _process.Id;

    public bool HasExited => _process.HasExited;

    public StreamWriter StandardInput => _process.StandardInput;

    public IReadOnlyList<string> StdoutLines
    {
        get
        {
            lock (_gate)
            {
                return [.. _stdoutLines];
            }
        }
    }

    public string Stderr
    {
        get
        {
            lock (_gate)
            {
                return _stderr.ToString();
            }
        }
    }

    public static ChildProcess Start(string path, IEnumerable<string> args)
    {
        var psi = new ProcessStartInfo(path)
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

        var process = new Process { StartInfo = psi, EnableRaisingEvents = true };
        var child = new ChildProcess(process, path + " " + string.Join(' ', psi.ArgumentList));
        process.OutputDataReceived += (_, e) => child.OnStdout(e.Data);
        process.ErrorDataReceived += (_, e) => child.OnStderr(e.Data);
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return child;
    }

    /// <summary>Waits for a stdout line matching <paramref name="match"/>; fails the test if the process exits first.</summary>
    public async Task<string> WaitForLineAsync(Func<string, bool> match, string what)
    {
        var line = await WaitForLineOrExitAsync(match, what);
        if (line is null)
        {
            Assert.Fail($"{what}: `{CommandLine}` exited with code {_process.ExitCode} first.\n{Describe()}");
        }

        return line;
    }

    /// <summary>
    /// Waits for a stdout line matching <paramref name="match"/> or for the process to exit (then returns null,
    /// with all output collected); fails the test if neither happens.
    /// </summary>
    public async Task<string?> WaitForLineOrExitAsync(Func<string, bool> match, string what)
    {
        var found = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_gate)
        {
            var existing = _stdoutLines.Find(l => match(l));
            if (existing is not null)
            {
                return existing;
            }

            _waiters.Add((match, found));
        }

        var stdoutClosed = _stdoutClosed.Task;
        var finished = await Task.WhenAny(found.Task, stdoutClosed, Task.Delay(HangLimit));
        if (found.Task.IsCompleted)
        {
            return await found.Task;
        }

        if (finished == stdoutClosed)
        {
            await WaitForExitAsync();
            return null;
        }

        Assert.Fail($"{what}: nothing within {HangLimit.TotalSeconds} s from `{CommandLine}`.\n{Describe()}");
        return null;
    }

    /// <summary>
    /// Waits for a stderr line (the daemon's log) matching <paramref name="match"/>, as it is written; fails the test
    /// if the process exits first or nothing matches within <see cref="HangLimit"/>.
    /// </summary>
    public async Task<string> WaitForStderrLineAsync(Func<string, bool> match, string what)
    {
        var found = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        lock (_gate)
        {
            var existing = _stderr.ToString().Split('\n').FirstOrDefault(l => match(l));
            if (existing is not null)
            {
                return existing;
            }

            _stderrWaiters.Add((match, found));
        }

        var finished = await Task.WhenAny(found.Task, _stderrClosed.Task, Task.Delay(HangLimit));
        if (found.Task.IsCompleted)
        {
            return await found.Task;
        }

        Assert.Fail(finished == _stderrClosed.Task
            ? $"{what}: `{CommandLine}` exited first.\n{Describe()}"
            : $"{what}: no such log line within {HangLimit.TotalSeconds} s from `{CommandLine}`.\n{Describe()}");
        return null!;
    }

    /// <summary>Waits for the process to exit and its output to drain; fails the test if it does not.</summary>
    public async Task<int> WaitForExitAsync()
    {
        using var cts = new CancellationTokenSource(HangLimit);
        try
        {
            await WaitForExitCoreAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            Assert.Fail($"`{CommandLine}` did not exit within {HangLimit.TotalSeconds} s.\n{Describe()}");
        }

        return _process.ExitCode;
    }

    public void Signal(int signal)
    {
        if (!_process.HasExited && Kill(_process.Id, signal) != 0)
        {
            var errno = Marshal.GetLastPInvokeError();
            if (!_process.HasExited)
            {
                Assert.Fail($"kill({_process.Id}, {signal}) failed with errno {errno}");
            }
        }
    }

    public string Describe()
    {
        lock (_gate)
        {
            return $"stdout:\n{string.Join('\n', _stdoutLines)}\nstderr:\n{_stderr}";
        }
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            if (!_process.HasExited)
            {
                _process.Kill(entireProcessTree: true);
            }

            using var cts = new CancellationTokenSource(HangLimit);
            await WaitForExitCoreAsync(cts.Token);
        }
        catch (Exception ex) when (ex is InvalidOperationException or OperationCanceledException)
        {
            // Already gone, or never started; nothing left to stop.
        }
        finally
        {
            _process.Dispose();
        }
    }

    private async Task WaitForExitCoreAsync(CancellationToken cancellationToken = default)
    {
        await _process.WaitForExitAsync(cancellationToken);
        await Task.WhenAll(_stdoutClosed.Task, _stderrClosed.Task).WaitAsync(cancellationToken);
    }

    private void OnStdout(string? line)
    {
        if (line is null)
        {
            _stdoutClosed.TrySetResult();
            return;
        }

        List<TaskCompletionSource<string>> matched;
        lock (_gate)
        {
            _stdoutLines.Add(line);
            matched = TakeMatchesLocked(_waiters, line);
        }

        foreach (var found in matched)
        {
            found.TrySetResult(line);
        }
    }

    private void OnStderr(string? line)
    {
        if (line is null)
        {
            _stderrClosed.TrySetResult();
            return;
        }

        List<TaskCompletionSource<string>> matched;
        lock (_gate)
        {
            _stderr.AppendLine(line);
            matched = TakeMatchesLocked(_stderrWaiters, line);
        }

        foreach (var found in matched)
        {
            found.TrySetResult(line);
        }
    }

    /// <summary>Removes the waiters that <paramref name="line"/> satisfies; they are completed outside the lock.</summary>
    private static List<TaskCompletionSource<string>> TakeMatchesLocked(
        List<(Func<string, bool> Match, TaskCompletionSource<string> Found)> waiters, string line)
    {
        List<TaskCompletionSource<string>> matched = [];
        for (var i = waiters.Count - 1; i >= 0; i--)
        {
            if (waiters[i].Match(line))
            {
                matched.Add(waiters[i].Found);
                waiters.RemoveAt(i);
            }
        }

        return matched;
    }

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int Kill(int pid, int signal);
}
