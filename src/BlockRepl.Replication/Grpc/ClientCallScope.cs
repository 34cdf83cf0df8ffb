using System.Net.Http;

namespace BlockRepl.Replication.Grpc;

/// <summary>
/// The cancellation of one client call: the caller's token plus a timer for the deadline, combined in one
/// token that every send and read of the call uses. Tells the two apart when mapping a cancellation to a
/// status (DEADLINE_EXCEEDED vs CANCELLED).
/// </summary>
internal sealed class ClientCallScope : IDisposable
{
    private readonly CancellationToken _callerToken;
    private readonly CancellationTokenSource? _deadlineSource;
    private readonly CancellationTokenSource _callSource;

    public ClientCallScope(CallOptions options)
    {
        _callerToken = options.CancellationToken;
        if (options.Deadline is { } deadline && deadline != DateTime.MaxValue)
        {
            var remaining = deadline.ToUniversalTime() - DateTime.UtcNow;
            Timeout = remaining > TimeSpan.Zero ? remaining : TimeSpan.Zero;

            // CancelAfter takes at most about 24.8 days; a longer deadline is as good as none locally.
            if (Timeout.Value.TotalMilliseconds < int.MaxValue)
            {
                _deadlineSource = new CancellationTokenSource(Timeout.Value);
            }
        }

        _callSource = _deadlineSource is null
            ? CancellationTokenSource.CreateLinkedTokenSource(_callerToken)
            : CancellationTokenSource.CreateLinkedTokenSource(_callerToken, _deadlineSource.Token);
        if (Timeout == TimeSpan.Zero)
        {
            _callSource.Cancel();
        }
    }

    /// <summary>The time left when the call started (sent as grpc-timeout); null without a deadline.</summary>
    public TimeSpan? Timeout { get; }

    public CancellationToken Token => _callSource.Token;

    public bool DeadlineExceeded =>
        !_callerToken.IsCancellationRequested
        && (_deadlineSource?.IsCancellationRequested == true || Timeout == TimeSpan.Zero);

    /// <summary>Cancels the call (the HTTP/2 stream is reset).</summary>
    public void Cancel()
    {
        try
        {
            _callSource.Cancel();
        }
        catch (ObjectDisposedException)
        {
            // Already disposed: the call is over.
        }
    }

    /// <summary>The status for a transport or cancellation exception; null for exceptions that are bugs.</summary>
    public Status? TryMapException(Exception ex)
    {
        if (DeadlineExceeded)
        {
            return new Status(StatusCode.DeadlineExceeded, "Deadline Exceeded");
        }

        if (_callerToken.IsCancellationRequested && ex is OperationCanceledException or IOException or HttpRequestException)
        {
            return new Status(StatusCode.Cancelled, "Call canceled by the client.");
        }

        return ex switch
        {
            HttpRequestException http => new Status(StatusCode.Unavailable, "Error starting gRPC call: " + http.Message),
            IOException io => new Status(StatusCode.Unavailable, "Error reading or writing the gRPC stream: " + io.Message),
            OperationCanceledException => new Status(StatusCode.Cancelled, "Call canceled."),
            ObjectDisposedException => new Status(StatusCode.Cancelled, "Call was disposed."),
            _ => null,
        };
    }

    public void Dispose()
    {
        _callSource.Dispose();
        _deadlineSource?.Dispose();
    }
}
