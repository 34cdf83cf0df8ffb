namespace BlockRepl.Replication.Grpc;

/// <summary>
/// A call ended with a non-OK status. Thrown by the client for the peer's status, and by server handlers
/// to answer with a status (the server pipeline turns it into <c>grpc-status</c>/<c>grpc-message</c>).
/// </summary>
internal sealed class RpcException : Exception
{
    public RpcException(Status status)
        : base($"{status.StatusCode}: {status.Detail}")
    {
        Status = status;
    }

    public RpcException(Status status, Exception innerException)
        : base($"{status.StatusCode}: {status.Detail}", innerException)
    {
        Status = status;
    }

    public RpcException(StatusCode statusCode, string detail)
        : this(new Status(statusCode, detail))
    {
    }

    public Status Status { get; }

    public StatusCode StatusCode => Status.StatusCode;
}
