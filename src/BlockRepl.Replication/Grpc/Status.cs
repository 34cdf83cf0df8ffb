namespace BlockRepl.Replication.Grpc;

/// <summary>The outcome of a call: a status code and an optional human-readable detail (<c>grpc-message</c>).</summary>
internal readonly record struct Status(StatusCode StatusCode, string Detail)
{
    public static readonly Status DefaultSuccess = new(StatusCode.OK, string.Empty);

    public override string ToString() => $"Status(StatusCode=\"{StatusCode}\", Detail=\"{Detail}\")";
}
