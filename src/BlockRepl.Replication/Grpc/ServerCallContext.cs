using Microsoft.AspNetCore.Http;

namespace BlockRepl.Replication.Grpc;

/// <summary>
/// What a server handler knows about its call: the method, the peer, the deadline and one cancellation
/// token that fires when the client cancels (HTTP/2 RST_STREAM, seen as RequestAborted) or the deadline
/// passes. A handler may set <see cref="Status"/> to end a call that returned normally with another status.
/// </summary>
internal sealed class ServerCallContext : IDisposable
{
    private readonly HttpContext _httpContext;
    private readonly CancellationTokenSource? _deadlineSource;
    private readonly CancellationTokenSource? _linkedSource;

    public ServerCallContext(HttpContext httpContext, string method, TimeSpan? timeout)
    {
        _httpContext = httpContext;
        Method = method;
        Timeout = timeout;
        if (timeout is { } t)
        {
            Deadline = DateTime.UtcNow + t;

            // CancelAfter takes at most about 24.8 days; a longer timeout is as good as none.
            if (t.TotalMilliseconds < int.MaxValue)
            {
                _deadlineSource = new CancellationTokenSource(t);
                _linkedSource = CancellationTokenSource.CreateLinkedTokenSource(httpContext.RequestAborted, _deadlineSource.Token);
            }
        }

        CancellationToken = _linkedSource?.Token ?? httpContext.RequestAborted;
    }

    /// <summary>The method path, e.g. "/blockrepl.v1.Replication/Replicate".</summary>
    public string Method { get; }

    /// <summary>The remote endpoint, "ipv4:ADDR:PORT" style as Grpc.Core prints it.</summary>
    public string Peer => $"ipv4:{_httpContext.Connection.RemoteIpAddress}:{_httpContext.Connection.RemotePort}";

    /// <summary>The absolute deadline (UTC), or <see cref="DateTime.MaxValue"/> without one.</summary>
    public DateTime Deadline { get; } = DateTime.MaxValue;

    public TimeSpan? Timeout { get; }

    /// <summary>Fires on client cancellation or when the deadline passes.</summary>
    public CancellationToken CancellationToken { get; }

    /// <summary>The status sent when the handler returns without throwing (OK unless the handler sets it).</summary>
    public Status Status { get; set; } = Status.DefaultSuccess;

    /// <summary>True once the deadline has passed and the client had not already gone.</summary>
    public bool DeadlineExceeded =>
        _deadlineSource is { IsCancellationRequested: true } && !_httpContext.RequestAborted.IsCancellationRequested;

    /// <summary>The underlying ASP.NET Core request (grpc-dotnet's <c>GetHttpContext()</c>).</summary>
    public HttpContext GetHttpContext() => _httpContext;

    public void Dispose()
    {
        _linkedSource?.Dispose();
        _deadlineSource?.Dispose();
    }
}
