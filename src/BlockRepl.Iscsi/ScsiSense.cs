namespace BlockRepl.Iscsi;

/// <summary>SCSI status codes, sense keys and the additional sense codes this target reports (SPC-4 4.5, 7.x).</summary>
internal static class ScsiSense
{
    public const byte StatusGood = 0x00;
    public const byte StatusCheckCondition = 0x02;
    public const byte StatusBusy = 0x08;
    public const byte StatusReservationConflict = 0x18;
    public const byte StatusTaskSetFull = 0x28;

    public const byte KeyNoSense = 0x00;
    public const byte KeyNotReady = 0x02;
    public const byte KeyMediumError = 0x03;
    public const byte KeyHardwareError = 0x04;
    public const byte KeyIllegalRequest = 0x05;
    public const byte KeyUnitAttention = 0x06;
    public const byte KeyDataProtect = 0x07;
    public const byte KeyAbortedCommand = 0x0b;
    public const byte KeyMiscompare = 0x0e;

    /// <summary>ASC/ASCQ pairs, as (ASC &lt;&lt; 8) | ASCQ.</summary>
    public const ushort InvalidOpcode = 0x2000;
    public const ushort LbaOutOfRange = 0x2100;
    public const ushort InvalidFieldInCdb = 0x2400;
    public const ushort LogicalUnitNotSupported = 0x2500;
    public const ushort InvalidFieldInParameterList = 0x2600;
    public const ushort ParameterListLengthError = 0x1a00;
    public const ushort WriteProtected = 0x2700;
    public const ushort PowerOnOrReset = 0x2900;
    public const ushort BusDeviceResetOccurred = 0x2903;
    public const ushort CapacityChanged = 0x2a09;
    public const ushort ReservationsPreempted = 0x2a03;
    public const ushort RegistrationsPreempted = 0x2a05;
    public const ushort ReservationsReleased = 0x2a04;
    public const ushort SavingParametersNotSupported = 0x3900;
    public const ushort MiscompareDuringVerify = 0x1d00;
    public const ushort UnrecoveredReadError = 0x1100;
    public const ushort WriteError = 0x0c00;
    public const ushort InsufficientRegistrationResources = 0x5504;
    public const ushort CommandsClearedByAnotherInitiator = 0x2f00;
    public const ushort DataPhaseError = 0x4b00;

    /// <summary>Fixed-format sense data (SPC-4 4.5.3), 18 bytes; <paramref name="information"/> sets VALID.</summary>
    public static byte[] Fixed(byte key, ushort ascq, ulong? information = null)
    {
        var s = new byte[18];
        s[0] = 0x70;
        s[2] = key;
        if (information is { } info)
        {
            s[0] |= 0x80;
            s[3] = (byte)(info >> 24);
            s[4] = (byte)(info >> 16);
            s[5] = (byte)(info >> 8);
            s[6] = (byte)info;
        }

        s[7] = 10;
        s[12] = (byte)(ascq >> 8);
        s[13] = (byte)ascq;
        return s;
    }
}
